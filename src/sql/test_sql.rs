//! SQL helpers the `#[pg_test]` modules share: each runs one statement through
//! SPI and panics, naming the statement, if it fails.

use pgrx::prelude::*;

pub fn text(sql: &str) -> String {
    Spi::get_one::<String>(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_default()
}

pub fn count(sql: &str) -> i64 {
    Spi::get_one::<i64>(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or(-1)
}

pub fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// ingest_json's verdicts as `status:metrics_stored` (and `:field` when rejected).
pub fn verdicts(payload: &str) -> String {
    text(&format!(
        "SELECT string_agg(concat_ws(':', status, metrics_stored, field), ',' ORDER BY ordinal) \
         FROM metrics_ingest.ingest_json({})",
        pgrx::spi::quote_literal(payload)
    ))
}
