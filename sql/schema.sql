-- metrics_ingest: tables, indexes and roles. Every name is schema-qualified:
-- this script must mean the same whatever search_path CREATE EXTENSION runs with.

-- Payloads, ids and labels are read as UTF-8 text; in any other database encoding they
-- would be misread or altered, so refuse to install there rather than store garbage.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'metrics_ingest requires a UTF8 database, not %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0';
    END IF;
END
$encoding$;

-- Roles are cluster-wide and outlive the extension; create them only when absent.
-- Two databases may run CREATE EXTENSION at the same moment: the loser of the race
-- for a role finds it created (unique_violation) and goes on.
DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['metrics_ingest_writer', 'metrics_ingest_reader',
                                     'metrics_ingest_pii_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    -- Since 0.3.0: whoever may read personal data may read the rest.
    IF NOT pg_catalog.pg_has_role('metrics_ingest_pii_reader', 'metrics_ingest_reader', 'MEMBER') THEN
        GRANT metrics_ingest_reader TO metrics_ingest_pii_reader;
    END IF;
END
$roles$;

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

-- The registry: which metric types exist and how each is validated.
-- Adding one is one INSERT; no schema change.
CREATE TABLE metrics_ingest.metric_types (
    metric_type text PRIMARY KEY
        CHECK (metric_type OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,62}$')
        -- a metric named like a context field would make wide-form elements ambiguous
        CHECK (metric_type <> ALL (ARRAY['timestamp', 'timestamp_ms', 'user_id', 'session_id',
            'metric_type', 'metric_value', 'value', 'device_id', 'app_version', 'location',
            'sentiment_score', 'event_id', 'platform', 'name', 'email'])),
    value_kind text NOT NULL CHECK (value_kind IN ('number', 'boolean', 'score')),
    min_value double precision,
    max_value double precision,
    unit text,
    -- label -> score, for value_kind 'score' (e.g. {"positive": 1})
    labels jsonb NOT NULL DEFAULT '{}'::jsonb
        CHECK (pg_catalog.jsonb_typeof(labels) = 'object'),
    description text,
    -- rows shipped by the extension; pg_dump keeps only the others (CREATE EXTENSION recreates these)
    builtin boolean NOT NULL DEFAULT false,
    CHECK (min_value IS NULL OR max_value IS NULL OR min_value <= max_value),
    CHECK (min_value <> 'NaN'::double precision AND max_value <> 'NaN'::double precision),
    CONSTRAINT metric_types_labels_valid
        CHECK (metrics_ingest.labels_are_valid(value_kind, min_value, max_value, labels))
);

INSERT INTO metrics_ingest.metric_types
    (metric_type, value_kind, min_value, max_value, unit, labels, description, builtin)
VALUES
    ('talked_time', 'number', 0, NULL, 'seconds', '{}', 'Time the user talked during the call', true),
    ('microphone_used', 'boolean', NULL, NULL, NULL, '{}', 'Whether a microphone was used (stored as 0 or 1)', true),
    ('speaker_used', 'boolean', NULL, NULL, NULL, '{}', 'Whether a speaker was used (stored as 0 or 1)', true),
    ('voice_sentiment', 'score', -1, 1, 'score',
        '{"negative": -1, "neutral": 0, "positive": 1}',
        'Sentiment of the voice: a score in [-1, 1] or a label (kept in metric_label)', true);

SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.metric_types', 'WHERE NOT builtin');

-- One row per metric observation.
CREATE TABLE metrics_ingest.metrics (
    id bigint GENERATED ALWAYS AS IDENTITY,
    "timestamp" timestamptz NOT NULL,
    user_id text NOT NULL,
    session_id text,
    metric_type text NOT NULL,
    metric_value double precision NOT NULL,
    -- the label as sent, for label-valued metrics ("positive")
    metric_label text,
    device_id text,
    app_version text,
    location text,
    sentiment_score double precision CHECK (sentiment_score BETWEEN -1 AND 1),
    -- the client's idempotency key
    event_id text,
    -- fields the schema does not know, kept rather than dropped
    attributes jsonb,
    ingested_at timestamptz NOT NULL DEFAULT pg_catalog.now()
) PARTITION BY RANGE ("timestamp");
-- Partitions are made on demand (metrics_ingest.partition_for, called by ingest_json and
-- insert_metric when a row's time falls in none), named for the start of their range
-- (metrics_p20240812), and dropped whole by run_maintenance once older than the retention.
-- There is deliberately no default partition: late data gets a partition of its own.

-- The keys and indexes live on each partition (see partition_for in sql/partitions.sql):
-- primary key (user_id, "timestamp", id); the event key, unique (user_id, event_id,
-- metric_type, "timestamp") WHERE event_id IS NOT NULL; (session_id, "timestamp");
-- (metric_type, "timestamp"); BRIN ("timestamp"). Both unique keys include "timestamp",
-- the partition key, so unique in each partition is unique in the table. None is declared
-- on the partitioned table itself: an extension's table whose partitions carry indexes
-- attached to its own would not survive pg_dump and pg_restore (the restore's ATTACH
-- PARTITION would make the partitions' indexes before the dump makes them again).

SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.metrics', '');
SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.metrics_id_seq', '');

-- The dead-letter table: every element that failed validation, as received.
CREATE TABLE metrics_ingest.rejected (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rejected_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- the role that sent it (functions run as their owner, so current_user would not tell)
    rejected_by name NOT NULL DEFAULT pg_catalog.session_user(),
    -- 'ingest_json'
    source text NOT NULL,
    -- 1-based position of the element in its payload
    ordinal integer NOT NULL,
    -- the element exactly as received: text, not jsonb, so even JSON that jsonb refuses
    -- (\u0000, lone surrogates, duplicate keys) is kept verbatim
    element text NOT NULL,
    field text NOT NULL,
    error text NOT NULL,
    sqlstate text NOT NULL,
    -- the element's user_id and event_id, when they could still be read (a JSON object,
    -- the key once, a valid id value); NULL otherwise. Since 0.2.0.
    user_id text,
    event_id text
);
CREATE INDEX rejected_at_idx ON metrics_ingest.rejected (rejected_at);
-- Idempotent dead letters (since 0.2.0): an element with a readable event_id is kept
-- once per exact text. Sending the same bad element again (a retry, a replayed Spark
-- micro-batch) adds no second row (ON CONFLICT DO NOTHING in the writer). The element's
-- text, not only (user_id, event_id), is in the key: in long form one event is several
-- elements sharing an event_id, and two different bad ones must both be kept.
CREATE UNIQUE INDEX rejected_event_key ON metrics_ingest.rejected
    (event_id, pg_catalog.md5(element)) WHERE event_id IS NOT NULL;

SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.rejected', '');

-- Upkeep settings: at most one row, written by the set_* functions; no row means every
-- default (CREATE EXTENSION makes none, so that pg_dump's copy of a row a user set restores
-- beside a fresh install without a conflict).
CREATE TABLE metrics_ingest.settings (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- width of partitions made from now on; whole days or hours, no months (date_bin's grid)
    partition_interval interval NOT NULL DEFAULT '1 day'
        CHECK (partition_interval >= '1 hour' AND partition_interval <= '366 days'
               AND pg_catalog.date_part('month', partition_interval) = 0
               AND pg_catalog.date_part('year', partition_interval) = 0),
    -- metrics older than this are refused and their partitions dropped; NULL keeps everything
    retention interval CHECK (retention > '0'),
    -- dead letters older than this are deleted by run_maintenance; NULL keeps them
    rejected_retention interval CHECK (rejected_retention > '0')
);
SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.settings', '');
SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.rejected_id_seq', '');

-- Privileges: tables are reachable only through the functions (writer) or read-only (reader).
REVOKE ALL ON ALL TABLES IN SCHEMA metrics_ingest FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA metrics_ingest FROM PUBLIC;
GRANT USAGE ON SCHEMA metrics_ingest TO metrics_ingest_writer, metrics_ingest_reader,
    metrics_ingest_pii_reader;
GRANT SELECT ON metrics_ingest.metrics, metrics_ingest.rejected, metrics_ingest.metric_types,
    metrics_ingest.settings TO metrics_ingest_reader;
