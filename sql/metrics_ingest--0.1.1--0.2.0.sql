-- metrics_ingest 0.1.1 -> 0.2.0. Each change below is also in the install script
-- (sql/schema.sql, sql/api.sql, sql/comments.sql); the upgrade test checks that an
-- upgraded catalog equals a fresh one.
\echo Use "ALTER EXTENSION metrics_ingest UPDATE TO '0.2.0'" to load this file. \quit

-- ---- hardening (issue 10): the registry refuses labels it would ignore; its
-- invalidation trigger also fires for changes applied by logical replication.
-- A label the validator would never match, or a score it would then refuse, is
-- refused here instead, when the type is registered (23514). The validator matches
-- labels ignoring ASCII case and reads a value that looks like a number as one; it
-- stores scores as double precision within [min_value, max_value].
CREATE FUNCTION metrics_ingest.labels_are_valid(
    value_kind text, min_value double precision, max_value double precision, labels jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
BEGIN ATOMIC
    SELECT labels IS NULL OR pg_catalog.jsonb_typeof(labels) <> 'object' OR (
        (labels = '{}'::jsonb OR value_kind = 'score')
        AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.jsonb_each(labels) AS l(label, score)
            WHERE CASE WHEN pg_catalog.jsonb_typeof(l.score) <> 'number' THEN true
                       -- finite and not rounded to zero as double precision, within bounds
                       ELSE pg_catalog.abs((l.score)::numeric) > 1.7976931348623157e308
                         OR ((l.score)::numeric <> 0
                             AND pg_catalog.abs((l.score)::numeric) < 4.9406564584124654e-324)
                         OR (l.score)::numeric < min_value::numeric
                         OR (l.score)::numeric > max_value::numeric END
               OR l.label = ''
               OR pg_catalog.length(l.label) > 64
               OR l.label OPERATOR(pg_catalog.~*)
                   '^\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?|inf|infinity|nan)\s*$')
        AND (SELECT pg_catalog.count(*) = pg_catalog.count(DISTINCT pg_catalog.lower(l.label COLLATE "C"))
             FROM pg_catalog.jsonb_object_keys(labels) AS l(label)));
END;

ALTER TABLE metrics_ingest.metric_types ADD CONSTRAINT metric_types_labels_valid
    CHECK (metrics_ingest.labels_are_valid(value_kind, min_value, max_value, labels));

ALTER TABLE metrics_ingest.metric_types ENABLE ALWAYS TRIGGER metric_types_changed;

REVOKE ALL ON FUNCTION metrics_ingest.labels_are_valid(text, double precision, double precision, jsonb) FROM PUBLIC;

COMMENT ON FUNCTION metrics_ingest.labels_are_valid(text, double precision, double precision, jsonb) IS
    'The CHECK on metric_types.labels: finite numeric scores within the bounds, labels the validator can match (not numeric-looking, not equal ignoring case), labels only on score types. Like every function here, not executable by PUBLIC: metric types are added by the extension''s owner';
