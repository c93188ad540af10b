//! Installing: the extension refuses databases whose encoding it would misread.

use metrics_ingest_tests::server::{
    admin, admin_config, error_text, sqlstate, unique_name, TestDb,
};

#[test]
fn a_database_that_is_not_utf8_is_refused_at_create_extension() {
    // Holds the test's share of the cluster while the extra database lives.
    let _utf8 = TestDb::new("install_utf8");
    let name = unique_name("mi_test", "sql_ascii");
    let mut superuser = admin();
    superuser
        .batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .unwrap_or_else(|e| panic!("create {name}: {}", error_text(&e)));
    let mut config = admin_config();
    config.dbname(&name);
    let outcome = config
        .connect(postgres::NoTls)
        .map_err(|e| error_text(&e))
        .and_then(|mut client| {
            client
                .batch_execute("CREATE EXTENSION metrics_ingest")
                .map_err(|e| format!("{}|{}", sqlstate(&e), error_text(&e)))
        });
    superuser
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .expect("drop");
    let error = outcome.expect_err("CREATE EXTENSION in a SQL_ASCII database must fail");
    assert!(error.starts_with("0A000|"), "{error}");
    assert!(
        error.contains("metrics_ingest requires a UTF8 database, not SQL_ASCII"),
        "{error}"
    );
}
