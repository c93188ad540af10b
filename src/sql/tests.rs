//! SQL-facing tests, run by `cargo pgrx test` inside a real PostgreSQL.
