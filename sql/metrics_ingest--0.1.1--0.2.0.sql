-- metrics_ingest 0.1.1 -> 0.2.0. Each change below is also in the install script
-- (sql/schema.sql, sql/api.sql, sql/comments.sql); the upgrade test checks that an
-- upgraded catalog equals a fresh one.
\echo Use "ALTER EXTENSION metrics_ingest UPDATE TO '0.2.0'" to load this file. \quit
