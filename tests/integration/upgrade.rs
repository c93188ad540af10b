//! Upgrades: every earlier version installs from its frozen script, keeps its
//! rows through `ALTER EXTENSION metrics_ingest UPDATE`, and ends with exactly
//! the catalog a fresh install of the current version has.

use metrics_ingest_tests::server::{error_text, Client, TestDb};

/// Everything about the extension's objects that an upgrade must reproduce.
const CATALOG: &[(&str, &str)] = &[
    (
        "members",
        "SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend \
         WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e' \
         AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'metrics_ingest')",
    ),
    (
        "columns",
        "SELECT concat_ws(' ', attrelid::regclass, attname, format_type(atttypid, atttypmod), attnotnull, \
         pg_get_expr(d.adbin, d.adrelid), attidentity) FROM pg_attribute a \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         JOIN pg_class c ON c.oid = a.attrelid \
         WHERE c.relnamespace = 'metrics_ingest'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped \
         AND NOT c.relispartition AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                                                  WHERE i.indexrelid = c.oid AND t.relispartition)",
    ),
    (
        "indexes",
        "SELECT indexdef FROM pg_indexes i JOIN pg_class t ON t.oid = format('%I.%I', i.schemaname, i.tablename)::regclass \
         WHERE schemaname = 'metrics_ingest' AND NOT t.relispartition",
    ),
    (
        "constraints",
        "SELECT conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE connamespace = 'metrics_ingest'::regnamespace \
         AND NOT (SELECT relispartition FROM pg_class WHERE oid = conrelid)",
    ),
    (
        "functions",
        "SELECT pg_get_functiondef(oid) || coalesce(proacl::text, '') FROM pg_proc \
         WHERE pronamespace = 'metrics_ingest'::regnamespace",
    ),
    (
        "table privileges",
        "SELECT relname || coalesce(relacl::text, '') FROM pg_class c \
         WHERE relnamespace = 'metrics_ingest'::regnamespace AND NOT relispartition \
         AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                         WHERE i.indexrelid = c.oid AND t.relispartition)",
    ),
    (
        "comments",
        "SELECT pg_describe_object(classoid, objoid, objsubid) || ': ' || description FROM pg_description \
         WHERE (classoid = 'pg_class'::regclass AND objoid IN \
                (SELECT oid FROM pg_class WHERE relnamespace = 'metrics_ingest'::regnamespace)) \
            OR (classoid = 'pg_proc'::regclass AND objoid IN \
                (SELECT oid FROM pg_proc WHERE pronamespace = 'metrics_ingest'::regnamespace))",
    ),
    (
        "dumped configuration",
        "SELECT c::regclass || ' ' || coalesce(w, '') FROM pg_extension e, \
         unnest(e.extconfig, e.extcondition) AS u(c, w) WHERE e.extname = 'metrics_ingest'",
    ),
    ("triggers", "SELECT tgname || ' ' || tgrelid::regclass FROM pg_trigger WHERE NOT tgisinternal"),
];

fn catalog(client: &mut Client) -> Vec<(String, Vec<String>)> {
    CATALOG
        .iter()
        .map(|(name, sql)| {
            let mut lines: Vec<String> = client
                .query(*sql, &[])
                .unwrap_or_else(|e| panic!("{name}: {}", error_text(&e)))
                .iter()
                .map(|row| row.get::<_, String>(0))
                .collect();
            lines.sort();
            (name.to_string(), lines)
        })
        .collect()
}

fn one_text(client: &mut Client, sql: &str) -> String {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
        .get(0)
}

fn stored_rows(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT concat_ws('|', id, \"timestamp\", user_id, session_id, metric_type, metric_value, \
             metric_label, event_id, attributes) FROM metrics_ingest.metrics ORDER BY id",
            &[],
        )
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

const BEFORE: &str = r#"[
    {"user_id":"up","timestamp":"2024-05-01T00:00:00Z","talked_time":30,"voice_sentiment":"positive","event_id":"up-1","os":"ios"},
    {"user_id":"up","timestamp":"2024-05-01T00:00:01Z","metric_type":"microphone_used","metric_value":true},
    {"user_id":"up","timestamp":"not a date","talked_time":1}
]"#;

#[test]
fn every_earlier_version_upgrades_to_the_current_catalog_keeping_its_rows() {
    let fresh = TestDb::new("upgrade_fresh");
    let mut fresh_client = fresh.connect();
    let current = one_text(
        &mut fresh_client,
        "SELECT extversion FROM pg_extension WHERE extname = 'metrics_ingest'",
    );
    let expected_catalog = catalog(&mut fresh_client);
    let earlier: Vec<String> = fresh_client
        .query(
            "SELECT version FROM pg_available_extension_versions WHERE name = 'metrics_ingest' AND version <> $1 \
             ORDER BY string_to_array(version, '.')::int[]",
            &[&current],
        )
        .expect("versions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!earlier.is_empty(), "no earlier version of metrics_ingest is installed (sql/released/ is copied by install_extension)");

    for version in earlier {
        let old = fresh.beside(&format!("upgrade_from_{version}"), false);
        let mut client = old.connect();
        client
            .batch_execute(&format!(
                "CREATE EXTENSION metrics_ingest VERSION '{version}'"
            ))
            .unwrap_or_else(|e| panic!("install {version}: {}", error_text(&e)));
        let verdicts: Vec<String> = client
            .query(
                "SELECT status FROM metrics_ingest.ingest_json($1::text) ORDER BY ordinal",
                &[&BEFORE],
            )
            .unwrap_or_else(|e| panic!("ingest on {version}: {}", error_text(&e)))
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(
            verdicts,
            ["inserted", "inserted", "rejected"],
            "on {version}"
        );
        let rows_before = stored_rows(&mut client);
        assert_eq!(rows_before.len(), 3, "on {version}");

        client
            .batch_execute("ALTER EXTENSION metrics_ingest UPDATE")
            .unwrap_or_else(|e| panic!("update from {version}: {}", error_text(&e)));
        let now = one_text(
            &mut client,
            "SELECT extversion FROM pg_extension WHERE extname = 'metrics_ingest'",
        );
        assert_eq!(now, current, "updated from {version}");

        assert_eq!(
            stored_rows(&mut client),
            rows_before,
            "rows kept through the update from {version}"
        );
        let rejected = one_text(
            &mut client,
            "SELECT string_agg(field || ':' || ordinal, ',') FROM metrics_ingest.rejected",
        );
        assert_eq!(
            rejected, "timestamp:3",
            "dead letters kept through the update from {version}"
        );
        // The functions work after the update: a retry is a duplicate, a new event is stored.
        let again: Vec<String> = client
            .query(
                "SELECT status FROM metrics_ingest.ingest_json($1::text) ORDER BY ordinal",
                &[&r#"[{"user_id":"up","timestamp":"2024-05-01T00:00:00Z","talked_time":30,"voice_sentiment":"positive","event_id":"up-1","os":"ios"},
                      {"user_id":"up","timestamp":"2024-05-02T00:00:00Z","talked_time":5,"event_id":"up-2"}]"#],
            )
            .expect("ingest after update")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(
            again,
            ["duplicate", "inserted"],
            "after the update from {version}"
        );
        client
            .batch_execute("CALL metrics_ingest.insert_metric('2024-05-03T00:00:00Z', 'up', NULL, 'speaker_used', 1)")
            .expect("insert_metric after update");
        assert_eq!(stored_rows(&mut client).len(), 5);

        let upgraded_catalog = catalog(&mut client);
        for ((name, expected), (_, got)) in expected_catalog.iter().zip(&upgraded_catalog) {
            assert_eq!(
                got, expected,
                "{name} after updating from {version} differ from a fresh {current}"
            );
        }
    }
}
