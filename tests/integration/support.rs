//! Calling the extension's SQL API from the tests.

use metrics_ingest_tests::server::{error_text, Client};

/// One row of `metrics_ingest.ingest_json(...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ordinal: i32,
    pub status: String,
    pub error: Option<String>,
    pub field: Option<String>,
    pub metrics_stored: i32,
}

/// Which overload of ingest_json the payload goes through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    Text,
    Json,
    Jsonb,
}

impl Via {
    fn cast(self) -> &'static str {
        match self {
            Via::Text => "$1::text",
            Via::Json => "$1::text::json",
            Via::Jsonb => "$1::text::jsonb",
        }
    }
}

/// `SELECT * FROM metrics_ingest.ingest_json(payload, on_error)` through `via`.
pub fn ingest_with(
    client: &mut Client,
    payload: &str,
    via: Via,
    on_error: &str,
) -> Result<Vec<Outcome>, postgres::Error> {
    let sql = format!(
        "SELECT ordinal, status, error, field, metrics_stored \
         FROM metrics_ingest.ingest_json({}, $2) ORDER BY ordinal",
        via.cast()
    );
    let rows = client.query(&sql, &[&payload, &on_error])?;
    Ok(rows
        .iter()
        .map(|r| Outcome {
            ordinal: r.get(0),
            status: r.get(1),
            error: r.get(2),
            field: r.get(3),
            metrics_stored: r.get(4),
        })
        .collect())
}

/// ingest_json(payload::text) with the default on_error ('reject'); panics on error.
#[track_caller]
pub fn ingest(client: &mut Client, payload: &str) -> Vec<Outcome> {
    ingest_with(client, payload, Via::Text, "reject")
        .unwrap_or_else(|e| panic!("ingest_json failed: {}", error_text(&e)))
}

/// `SELECT count(*) ...` or any query returning one bigint.
#[track_caller]
pub fn count(client: &mut Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
        .get(0)
}

/// The first column of every row, as text (NULL as "<null>").
#[track_caller]
pub fn texts(client: &mut Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
        .iter()
        .map(|r| {
            r.get::<_, Option<String>>(0)
                .unwrap_or_else(|| "<null>".into())
        })
        .collect()
}
