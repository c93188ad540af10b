-- metrics_ingest 0.1.1 -> 0.2.0. Each change below is also in the install script
-- (sql/schema.sql, sql/api.sql, sql/partitions.sql, sql/comments.sql); the upgrade test
-- checks that an upgraded catalog equals a fresh one.
\echo Use "ALTER EXTENSION metrics_ingest UPDATE TO '0.2.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Time partitions. metrics becomes PARTITION BY RANGE ("timestamp"), in this one
-- transaction: the 0.1.1 table is renamed aside, the partitioned table is created with
-- the same columns, keys and indexes, partitions are made for the days its rows cover,
-- every row moves over with its id, and the identity sequence continues where it was.
-- ---------------------------------------------------------------------------
LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE;
ALTER TABLE metrics_ingest.metrics RENAME TO metrics_0_1_1;
ALTER SEQUENCE metrics_ingest.metrics_id_seq RENAME TO metrics_0_1_1_id_seq;
ALTER INDEX metrics_ingest.metrics_pkey RENAME TO metrics_0_1_1_pkey;
ALTER INDEX metrics_ingest.metrics_event_key RENAME TO metrics_0_1_1_event_key;
ALTER INDEX metrics_ingest.metrics_session_idx RENAME TO metrics_0_1_1_session_idx;
ALTER INDEX metrics_ingest.metrics_type_time_idx RENAME TO metrics_0_1_1_type_time_idx;
ALTER INDEX metrics_ingest.metrics_time_brin RENAME TO metrics_0_1_1_time_brin;

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
REVOKE ALL ON metrics_ingest.metrics FROM PUBLIC;
REVOKE ALL ON metrics_ingest.metrics_id_seq FROM PUBLIC;
GRANT SELECT ON metrics_ingest.metrics TO metrics_ingest_reader;

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
REVOKE ALL ON metrics_ingest.settings FROM PUBLIC;
GRANT SELECT ON metrics_ingest.settings TO metrics_ingest_reader;

-- metrics_ingest: time partitions made on demand, and their upkeep.
--
-- metrics is PARTITION BY RANGE ("timestamp"). A partition is made when a row's time falls
-- in none (by partition_for, which ingest_json and insert_metric call), as CREATE TABLE
-- followed by ATTACH PARTITION: ATTACH takes SHARE UPDATE EXCLUSIVE on metrics, which does
-- not conflict with the ROW EXCLUSIVE lock of ingest into existing partitions, where
-- CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE.

-- Every partition of metrics with its range. Bounds are read back from the catalog's text
-- form under a fixed TimeZone and DateStyle, so they parse back to the same instants.
-- Partitions with MINVALUE or MAXVALUE bounds (attached by hand) are listed with NULL there.
CREATE FUNCTION metrics_ingest.partitions()
RETURNS TABLE (partition regclass, lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
SET "DateStyle" = 'ISO'
AS $$
    SELECT c.oid::regclass,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\)'))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'))[1]::timestamptz
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'metrics_ingest.metrics'::regclass
    ORDER BY 2 NULLS FIRST
$$;

-- The partition that holds rows of time ts, made if there is none. Partitions lie on a grid
-- of the current partition_interval from 2000-01-01 UTC, cut short where an older partition
-- of another width already covers part of the cell. Creators take one transaction-level
-- advisory lock: a second session needing the same partition waits for the first to commit,
-- then finds it. If the calling transaction rolls back, so does its partition.
CREATE FUNCTION metrics_ingest.partition_for(ts timestamptz)
RETURNS regclass
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
SET "DateStyle" = 'ISO'
AS $$
DECLARE
    found regclass;
    width interval;
    cell_lower timestamptz;
    cell_upper timestamptz;
    name text;
BEGIN
    IF ts < '2000-01-01 00:00:00+00' OR ts >= '2100-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'metrics_ingest: % is outside the accepted window [2000-01-01, 2100-01-01)', ts
            USING ERRCODE = 'datetime_field_overflow';
    END IF;
    SELECT p.partition INTO found FROM metrics_ingest.partitions() p
    WHERE p.lower <= ts AND ts < p.upper;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    -- 'metrics_ingest partitions' in hashtext form is not needed: a fixed key pair is ours.
    PERFORM pg_advisory_xact_lock(1835365481, 1885434739);
    SELECT p.partition INTO found FROM metrics_ingest.partitions() p
    WHERE p.lower <= ts AND ts < p.upper;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    width := coalesce((SELECT s.partition_interval FROM metrics_ingest.settings s), '1 day');
    cell_lower := date_bin(width, ts, '2000-01-01 00:00:00+00');
    cell_upper := cell_lower + width;
    SELECT greatest(cell_lower, max(p.upper)) INTO cell_lower
    FROM metrics_ingest.partitions() p WHERE p.upper <= ts;
    SELECT least(cell_upper, min(p.lower)) INTO cell_upper
    FROM metrics_ingest.partitions() p WHERE p.lower > ts;
    name := 'metrics_p' || to_char(cell_lower, 'YYYYMMDD')
        || CASE WHEN cell_lower = date_trunc('day', cell_lower) THEN ''
                ELSE to_char(cell_lower, '"_"HH24MISS') END;
    -- Under REPEATABLE READ the query above may miss a partition another session committed
    -- after this transaction's snapshot; the catalog lookup by name does not.
    found := to_regclass(format('metrics_ingest.%I', name));
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    EXECUTE format('CREATE TABLE metrics_ingest.%I (LIKE metrics_ingest.metrics '
                   'INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)', name);
    -- The keys and indexes of every partition (see metrics in sql/schema.sql). user_id and
    -- "timestamp" lead every key: one user's metrics over a time range is the commonest
    -- query, and the table can be distributed by user without dropping a constraint.
    EXECUTE format('ALTER TABLE metrics_ingest.%I ADD CONSTRAINT %I PRIMARY KEY (user_id, "timestamp", id)',
                   name, name || '_pkey');
    -- Idempotency: the same event (user, event_id, metric type, timestamp) is stored at
    -- most once. Partial, so rows without an event_id cost nothing here.
    EXECUTE format('CREATE UNIQUE INDEX %I ON metrics_ingest.%I (user_id, event_id, metric_type, "timestamp") '
                   'WHERE event_id IS NOT NULL', name || '_event_key', name);
    -- One session's metrics, in time order.
    EXECUTE format('CREATE INDEX %I ON metrics_ingest.%I (session_id, "timestamp") WHERE session_id IS NOT NULL',
                   name || '_session_idx', name);
    -- One metric type over time (dashboards, aggregates per type).
    EXECUTE format('CREATE INDEX %I ON metrics_ingest.%I (metric_type, "timestamp")',
                   name || '_type_time_idx', name);
    -- Time ranges across all users: rows arrive roughly in time order, so BRIN is tiny.
    EXECUTE format('CREATE INDEX %I ON metrics_ingest.%I USING brin ("timestamp")',
                   name || '_time_brin', name);
    EXECUTE format('ALTER TABLE metrics_ingest.metrics ATTACH PARTITION metrics_ingest.%I '
                   'FOR VALUES FROM (%L) TO (%L)', name, cell_lower, cell_upper);
    RETURN format('metrics_ingest.%I', name)::regclass;
END
$$;

-- The width of partitions made from now on (existing ones keep theirs).
CREATE FUNCTION metrics_ingest.set_partition_interval(width interval)
RETURNS interval
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF date_part('month', width) <> 0 OR date_part('year', width) <> 0
       OR width < '1 hour' OR width > '366 days' THEN
        RAISE EXCEPTION 'metrics_ingest: partition interval must be between 1 hour and 366 days, in days and hours, not %', width
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'months vary in length; use days, e.g. ''7 days''';
    END IF;
    INSERT INTO metrics_ingest.settings AS s (partition_interval) VALUES (width)
    ON CONFLICT (singleton) DO UPDATE SET partition_interval = excluded.partition_interval;
    RETURN width;
END
$$;

-- How long metrics are kept; NULL keeps everything (the default). Elements older than
-- now() - retention are rejected, and run_maintenance drops partitions entirely older.
CREATE FUNCTION metrics_ingest.set_retention(keep interval)
RETURNS interval
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF keep <= '0' THEN
        RAISE EXCEPTION 'metrics_ingest: retention must be positive or NULL, not %', keep
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO metrics_ingest.settings AS s (retention) VALUES (keep)
    ON CONFLICT (singleton) DO UPDATE SET retention = excluded.retention;
    RETURN keep;
END
$$;

-- How long dead letters are kept; NULL keeps them (the default).
CREATE FUNCTION metrics_ingest.set_rejected_retention(keep interval)
RETURNS interval
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF keep <= '0' THEN
        RAISE EXCEPTION 'metrics_ingest: rejected retention must be positive or NULL, not %', keep
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO metrics_ingest.settings AS s (rejected_retention) VALUES (keep)
    ON CONFLICT (singleton) DO UPDATE SET rejected_retention = excluded.rejected_retention;
    RETURN keep;
END
$$;

-- Upkeep, meant for pg_cron: drops every partition entirely older than the retention
-- horizon, deletes dead letters older than rejected_retention, and says what it did.
-- Dropping a partition takes ACCESS EXCLUSIVE on metrics for a moment: it waits for
-- running ingest transactions and holds new ones back until it commits.
CREATE FUNCTION metrics_ingest.run_maintenance()
RETURNS TABLE (action text, object text, detail text)
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
SET "DateStyle" = 'ISO'
AS $$
DECLARE
    settings metrics_ingest.settings;
    horizon timestamptz;
    p record;
    n bigint;
BEGIN
    SELECT * INTO settings FROM metrics_ingest.settings;
    IF settings.retention IS NOT NULL THEN
        horizon := now() - settings.retention;
        FOR p IN SELECT x.partition::text AS name, x.lower, x.upper
                 FROM metrics_ingest.partitions() x WHERE x.upper <= horizon ORDER BY x.lower LOOP
            EXECUTE format('DROP TABLE %s', p.name);
            action := 'dropped partition';
            object := p.name;
            detail := format('[%s, %s) is older than the retention horizon %s (retention %s)',
                             p.lower, p.upper, horizon, settings.retention);
            RETURN NEXT;
        END LOOP;
    END IF;
    IF settings.rejected_retention IS NOT NULL THEN
        DELETE FROM metrics_ingest.rejected r WHERE r.rejected_at < now() - settings.rejected_retention;
        GET DIAGNOSTICS n = ROW_COUNT;
        action := 'deleted dead letters';
        object := 'metrics_ingest.rejected';
        detail := format('%s rejected before %s (rejected retention %s)',
                         n, now() - settings.rejected_retention, settings.rejected_retention);
        RETURN NEXT;
    END IF;
END
$$;

-- A change of settings reaches every backend's cached copy, as a change of metric_types does.
CREATE TRIGGER settings_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON metrics_ingest.settings
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_ingest.metric_types_changed();
ALTER TABLE metrics_ingest.settings ENABLE ALWAYS TRIGGER settings_changed;

REVOKE ALL ON FUNCTION metrics_ingest.partitions() FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.partition_for(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.set_partition_interval(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.set_retention(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.set_rejected_retention(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.run_maintenance() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION metrics_ingest.partitions() TO metrics_ingest_reader, metrics_ingest_writer;

-- A partition for every day the 0.1.1 rows cover, then the rows themselves.
SELECT metrics_ingest.partition_for(day)
FROM (SELECT DISTINCT pg_catalog.date_bin('1 day', "timestamp", '2000-01-01 00:00:00+00') AS day
      FROM metrics_ingest.metrics_0_1_1) days
ORDER BY day;

INSERT INTO metrics_ingest.metrics
    (id, "timestamp", user_id, session_id, metric_type, metric_value, metric_label, device_id,
     app_version, location, sentiment_score, event_id, attributes, ingested_at)
OVERRIDING SYSTEM VALUE
SELECT id, "timestamp", user_id, session_id, metric_type, metric_value, metric_label, device_id,
       app_version, location, sentiment_score, event_id, attributes, ingested_at
FROM metrics_ingest.metrics_0_1_1;

-- Partitions made by this script would be members of the extension (everything an
-- extension script creates is): pg_dump would skip them and retention could not drop
-- them. Partitions made at ingest time never are; these must not be either.
DO $members$
DECLARE
    p regclass;
BEGIN
    FOR p IN SELECT x.partition FROM metrics_ingest.partitions() x LOOP
        EXECUTE pg_catalog.format('ALTER EXTENSION metrics_ingest DROP TABLE %s', p);
    END LOOP;
END
$members$;

-- The identity goes on from where 0.1.1's stopped.
SELECT pg_catalog.setval('metrics_ingest.metrics_id_seq', s.last_value, s.is_called)
FROM metrics_ingest.metrics_0_1_1_id_seq s;

-- Out of the extension first, which also takes both out of pg_dump's configuration list.
ALTER EXTENSION metrics_ingest DROP SEQUENCE metrics_ingest.metrics_0_1_1_id_seq;
ALTER EXTENSION metrics_ingest DROP TABLE metrics_ingest.metrics_0_1_1;
DROP TABLE metrics_ingest.metrics_0_1_1;

COMMENT ON TABLE metrics_ingest.metrics IS
    'One row per metric observation. Written by ingest_json and insert_metric; see the README for the columns.';
COMMENT ON COLUMN metrics_ingest.metrics.metric_label IS
    'The label as sent for label-valued metrics (e.g. positive), whose score is in metric_value';
COMMENT ON COLUMN metrics_ingest.metrics.event_id IS
    'The client''s idempotency key: (user_id, event_id, metric_type, timestamp) is stored at most once';
COMMENT ON COLUMN metrics_ingest.metrics.attributes IS
    'Fields of the element that the schema does not know, kept rather than dropped';
COMMENT ON TABLE metrics_ingest.settings IS
    'Upkeep settings (one row): partition width, retention of metrics and of dead letters. Change with set_partition_interval, set_retention, set_rejected_retention.';
COMMENT ON FUNCTION metrics_ingest.partitions() IS
    'Every partition of metrics with its time range [lower, upper)';
COMMENT ON FUNCTION metrics_ingest.partition_for(timestamptz) IS
    'The partition holding a time, made (CREATE TABLE, then ATTACH PARTITION) if there is none; called by ingest_json and insert_metric';
COMMENT ON FUNCTION metrics_ingest.set_partition_interval(interval) IS
    'Sets the width of partitions made from now on (1 hour to 366 days, no months); existing partitions keep theirs';
COMMENT ON FUNCTION metrics_ingest.set_retention(interval) IS
    'Sets how long metrics are kept (NULL: forever). Older elements are rejected; run_maintenance drops older partitions';
COMMENT ON FUNCTION metrics_ingest.set_rejected_retention(interval) IS
    'Sets how long dead letters are kept (NULL: forever); run_maintenance deletes older ones';
COMMENT ON FUNCTION metrics_ingest.run_maintenance() IS
    'Upkeep for pg_cron: drops partitions older than the retention, deletes old dead letters; returns what it did';

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

-- ---------------------------------------------------------------------------
-- spark (issue 12, part 1): idempotent dead letters.
-- rejected gains user_id and event_id (read from the element, when readable) and a
-- unique index on (event_id, md5(element)): the same bad element sent again with an
-- event_id is kept once. Existing rows are backfilled from their stored element by
-- the same rules as the core's rejected_ids (src/core/element.rs): a JSON object, the
-- key exactly once, a non-empty string of at most 256 characters or an integer.
-- ---------------------------------------------------------------------------
ALTER TABLE metrics_ingest.rejected ADD COLUMN user_id text, ADD COLUMN event_id text;

DO $backfill$
DECLARE
    r record;
    doc json;
    ids text[];
    names text[] := ARRAY['user_id', 'event_id'];
    i integer;
    v json;
BEGIN
    FOR r IN SELECT id, element FROM metrics_ingest.rejected
             WHERE element LIKE '%"user\_id"%' OR element LIKE '%"event\_id"%' LOOP
        BEGIN
            doc := r.element::json;
            IF pg_catalog.json_typeof(doc) <> 'object' THEN
                CONTINUE;
            END IF;
            ids := ARRAY[NULL, NULL]::text[];
            FOR i IN 1..2 LOOP
                -- a key sent twice is ambiguous: unreadable
                CONTINUE WHEN (SELECT pg_catalog.count(*) FROM pg_catalog.json_object_keys(doc) AS k
                               WHERE k = names[i]) <> 1;
                v := doc -> names[i];
                IF pg_catalog.json_typeof(v) = 'string' THEN
                    ids[i] := v #>> '{}';
                    IF ids[i] = '' OR pg_catalog.length(ids[i]) > 256 THEN
                        ids[i] := NULL;
                    END IF;
                ELSIF pg_catalog.json_typeof(v) = 'number' AND (v::text OPERATOR(pg_catalog.~) '^-?[0-9]+$') THEN
                    ids[i] := v::text;
                END IF;
            END LOOP;
            UPDATE metrics_ingest.rejected SET user_id = ids[1], event_id = ids[2] WHERE id = r.id;
        EXCEPTION WHEN others THEN
            -- not JSON, or a string json cannot decode (\u0000, a lone surrogate): unreadable
            NULL;
        END;
    END LOOP;
END
$backfill$;

-- Dead letters stored twice before 0.2.0 (the same element re-sent): the oldest keeps
-- its event_id and so its place in the key; the later copies stay, with event_id NULL.
UPDATE metrics_ingest.rejected r SET event_id = NULL
FROM (SELECT id, pg_catalog.row_number() OVER (PARTITION BY event_id, pg_catalog.md5(element) ORDER BY id) AS n
      FROM metrics_ingest.rejected WHERE event_id IS NOT NULL) AS d
WHERE r.id = d.id AND d.n > 1;

CREATE UNIQUE INDEX rejected_event_key ON metrics_ingest.rejected
    (event_id, pg_catalog.md5(element)) WHERE event_id IS NOT NULL;

COMMENT ON COLUMN metrics_ingest.rejected.event_id IS
    'The element''s event_id when readable; an element with one is kept once per exact text (re-sending it adds no row)';
COMMENT ON COLUMN metrics_ingest.rejected.user_id IS
    'The element''s user_id when readable (a JSON object with a valid user_id), else NULL';

-- ---------------------------------------------------------------------------
-- spark (issue 12, part 2): metrics_ingest.ingest(json), PostgREST's entry point.
-- ---------------------------------------------------------------------------
CREATE FUNCTION metrics_ingest.ingest(json)
RETURNS TABLE (ordinal integer, status text, error text, field text, metrics_stored integer)
LANGUAGE sql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT
SECURITY INVOKER SET search_path = pg_catalog, pg_temp
ROWS 1000
AS $ingest$ SELECT * FROM metrics_ingest.ingest_json($1, 'reject') $ingest$;

REVOKE ALL ON FUNCTION metrics_ingest.ingest(json) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION metrics_ingest.ingest(json) TO metrics_ingest_writer;

COMMENT ON FUNCTION metrics_ingest.ingest(json) IS
    'ingest_json(payload, ''reject'') under one unnamed json parameter: the entry point PostgREST gives a raw request body (POST /rpc/ingest)';
