-- metrics_ingest: users, sessions and daily totals (since 0.3.0).
--
-- ingest_json and insert_metric keep them in the caller's transaction, from the rows they
-- store (never from duplicates, conflicts or rejected elements), so they commit and roll
-- back with those rows. Sessions and daily totals are views over delta rows: every call
-- inserts its own (session_parts, daily_parts) and never updates a shared row, so
-- concurrent calls never wait for each other here; run_maintenance compacts the deltas.

-- One row per user whose profile (name, email) is known: from elements that carry one
-- (seed 003), or inserted by the owner (seed 002). Users are never required to exist.
CREATE TABLE metrics_ingest.users (
    user_id text PRIMARY KEY,
    name text CHECK (pg_catalog.length(name) <= 256),
    -- as ingest checks it: an @ with text on each side, at most 254 characters
    email text CHECK (pg_catalog.length(email) <= 254 AND email OPERATOR(pg_catalog.~) '^[^@]+@.+$'),
    -- when this row was made, and when its name or email last changed
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- the timestamp of the element that set the name and email held (for a row the owner
    -- inserted: when it was inserted). An element's profile replaces the stored one only
    -- when the element is at least this new, so late data never overwrites a newer profile.
    profile_time timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.users', '');

-- Delta rows of sessions: one per (user, session) per call; compacted by run_maintenance.
CREATE TABLE metrics_ingest.session_parts (
    user_id text NOT NULL,
    session_id text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time timestamptz NOT NULL,
    metric_count bigint NOT NULL,
    -- from the part's rows at end_time: the greatest of each (COLLATE "C"), NULL if none has one
    device_id text,
    app_version text,
    platform text,
    location text,
    -- written by run_maintenance's compaction; a call's own delta rows are not
    compacted boolean NOT NULL DEFAULT false
);
CREATE INDEX session_parts_user_session ON metrics_ingest.session_parts (user_id, session_id);
-- what the next compaction has to fold: its cost follows the new rows, not the table
CREATE INDEX session_parts_fresh ON metrics_ingest.session_parts (user_id, session_id)
    WHERE NOT compacted;
SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.session_parts', '');

-- Delta rows of daily totals: one per (UTC day, metric type) per call; compacted by
-- run_maintenance. `archived`: raw rows of the day were dropped by retention, so the row
-- keeps history that metrics no longer holds (forget_user leaves such days as they are).
CREATE TABLE metrics_ingest.daily_parts (
    day date NOT NULL,
    metric_type text NOT NULL,
    samples bigint NOT NULL,
    total double precision NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    archived boolean NOT NULL DEFAULT false
);
CREATE INDEX daily_parts_day_type ON metrics_ingest.daily_parts (day, metric_type);
SELECT pg_catalog.pg_extension_config_dump('metrics_ingest.daily_parts', '');

-- A dead letter's user_id, for forget_user.
CREATE INDEX rejected_user_id_idx ON metrics_ingest.rejected (user_id) WHERE user_id IS NOT NULL;

-- One row per (user_id, session_id): the same session_id sent by two users is two sessions.
-- Like daily_totals, sessions outlive retention: a session whose rows run_maintenance
-- dropped keeps its summary (forget_user removes it with the user).
-- device_id, app_version, platform and location come from the session's latest metric;
-- among metrics sharing that timestamp, the greatest value of each (COLLATE "C") wins,
-- NULL only when none of them has one. platform is the element's "platform" field (kept in
-- metrics.attributes).
CREATE VIEW metrics_ingest.sessions AS
SELECT p.user_id,
       p.session_id,
       pg_catalog.min(p.start_time) AS start_time,
       pg_catalog.max(p.end_time) AS end_time,
       pg_catalog.sum(p.metric_count)::bigint AS metric_count,
       (pg_catalog.array_agg(p.device_id ORDER BY p.end_time DESC, p.device_id COLLATE "C" DESC NULLS LAST))[1] AS device_id,
       (pg_catalog.array_agg(p.app_version ORDER BY p.end_time DESC, p.app_version COLLATE "C" DESC NULLS LAST))[1] AS app_version,
       (pg_catalog.array_agg(p.platform ORDER BY p.end_time DESC, p.platform COLLATE "C" DESC NULLS LAST))[1] AS platform,
       (pg_catalog.array_agg(p.location ORDER BY p.end_time DESC, p.location COLLATE "C" DESC NULLS LAST))[1] AS location,
       pg_catalog.max(p.end_time) OPERATOR(pg_catalog.-) pg_catalog.min(p.start_time) AS duration
FROM metrics_ingest.session_parts p
GROUP BY p.user_id, p.session_id;

-- Per UTC day and metric type: what GROUP BY over metrics would say, from a few rows per day.
CREATE VIEW metrics_ingest.daily_totals AS
SELECT p.day,
       p.metric_type,
       pg_catalog.sum(p.samples)::bigint AS samples,
       pg_catalog.sum(p.total) AS total,
       pg_catalog.min(p.min) AS min,
       pg_catalog.max(p.max) AS max,
       pg_catalog.sum(p.total) OPERATOR(pg_catalog./) pg_catalog.sum(p.samples)::double precision AS mean
FROM metrics_ingest.daily_parts p
GROUP BY p.day, p.metric_type;

-- Folds the delta rows into one per session and per (day, metric type). The statement
-- that deletes them inserts their sum, under one snapshot: deltas of calls still running
-- are not seen, so not touched, and every committed moment sees each row counted once.
CREATE FUNCTION metrics_ingest.compact_rollups()
RETURNS TABLE (action text, object text, detail text)
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    m bigint;
BEGIN
    -- One compaction, rebuild or forget_user at a time (they would count a row twice): the
    -- rollups' lock is SHARE UPDATE EXCLUSIVE on metric_types, which neither ingest (it only
    -- reads metric_types) nor registering a type conflicts with, and which a role without
    -- privileges on it cannot take (0.3.0 and 0.3.1 used an advisory lock any role could hold).
    LOCK TABLE metrics_ingest.metric_types IN SHARE UPDATE EXCLUSIVE MODE;
    WITH fresh AS (
        SELECT DISTINCT f.user_id, f.session_id FROM metrics_ingest.session_parts f
        WHERE NOT f.compacted),
    gone AS (
        DELETE FROM metrics_ingest.session_parts s USING fresh f
        WHERE s.user_id = f.user_id AND s.session_id = f.session_id
        RETURNING s.*),
    folded AS (
        INSERT INTO metrics_ingest.session_parts
        SELECT g.user_id, g.session_id, min(g.start_time), max(g.end_time), sum(g.metric_count),
               (array_agg(g.device_id ORDER BY g.end_time DESC, g.device_id COLLATE "C" DESC NULLS LAST))[1],
               (array_agg(g.app_version ORDER BY g.end_time DESC, g.app_version COLLATE "C" DESC NULLS LAST))[1],
               (array_agg(g.platform ORDER BY g.end_time DESC, g.platform COLLATE "C" DESC NULLS LAST))[1],
               (array_agg(g.location ORDER BY g.end_time DESC, g.location COLLATE "C" DESC NULLS LAST))[1],
               true
        FROM gone g GROUP BY g.user_id, g.session_id
        RETURNING 1)
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM folded) INTO n, m;
    action := 'compacted sessions';
    object := 'metrics_ingest.session_parts';
    detail := format('%s delta rows folded into %s', n, m);
    RETURN NEXT;

    -- Archived and held parts of a day fold apart: rows stored for an archived day later (a
    -- retention lengthened) stay held rows' parts, which forget_user and rebuild_rollups
    -- recompute (0.3.2 folded them into the archive, where forget_user left them).
    WITH gone AS (
        DELETE FROM metrics_ingest.daily_parts d
        WHERE (d.day, d.metric_type, d.archived) IN (
            SELECT x.day, x.metric_type, x.archived FROM metrics_ingest.daily_parts x
            GROUP BY x.day, x.metric_type, x.archived HAVING count(*) > 1)
        RETURNING d.*),
    folded AS (
        INSERT INTO metrics_ingest.daily_parts
        SELECT g.day, g.metric_type, sum(g.samples), sum(g.total), min(g.min), max(g.max), g.archived
        FROM gone g GROUP BY g.day, g.metric_type, g.archived
        RETURNING 1)
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM folded) INTO n, m;
    action := 'compacted daily totals';
    object := 'metrics_ingest.daily_parts';
    detail := format('%s delta rows folded into %s', n, m);
    RETURN NEXT;
END
$$;

-- Recomputes sessions and daily totals from metrics: after metrics was written other than
-- through ingest_json and insert_metric (a DBA's UPDATE, DELETE or COPY), or to fill them
-- after an upgrade. The archived parts of daily totals (raw rows dropped by retention) are
-- kept as they are, and rows held on those days (stored after a retention was lengthened)
-- are counted in parts of their own (0.3.2 left them out); so are sessions that began
-- before the oldest partition held (retention dropped rows of theirs: 0.3.2 deleted their
-- summaries, or recounted them from the rows left). One statement per relation, under one
-- snapshot, so concurrent ingest stays exact.
CREATE FUNCTION metrics_ingest.rebuild_rollups()
RETURNS TABLE (relation text, rows_written bigint)
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    held_from timestamptz;
BEGIN
    LOCK TABLE metrics_ingest.metric_types IN SHARE UPDATE EXCLUSIVE MODE;
    held_from := (SELECT min(p.lower) FROM metrics_ingest.partitions() p);
    -- A session retention dropped rows of: one that began before the oldest partition held,
    -- or one on a day whose daily totals are archived (an older partition made again for a
    -- backfill moves the oldest one held back).
    WITH archived AS (
        SELECT DISTINCT a.user_id, a.session_id FROM metrics_ingest.session_parts a
        WHERE held_from IS NULL OR a.start_time < held_from
           OR EXISTS (SELECT 1 FROM metrics_ingest.daily_parts d
                      WHERE d.archived
                        AND d.day >= (a.start_time AT TIME ZONE 'UTC')::date
                        AND d.day <= (a.end_time AT TIME ZONE 'UTC')::date)),
    gone AS (
        DELETE FROM metrics_ingest.session_parts s
        WHERE NOT EXISTS (SELECT 1 FROM archived a
                          WHERE a.user_id = s.user_id AND a.session_id = s.session_id)
        RETURNING 1),
    latest AS (
        SELECT m.user_id, m.session_id, max(m."timestamp") AS end_time
        FROM metrics_ingest.metrics m WHERE m.session_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM archived a
                          WHERE a.user_id = m.user_id AND a.session_id = m.session_id)
        GROUP BY m.user_id, m.session_id),
    fresh AS (
        INSERT INTO metrics_ingest.session_parts
        SELECT m.user_id, m.session_id, min(m."timestamp"), l.end_time, count(*),
               max(m.device_id COLLATE "C") FILTER (WHERE m."timestamp" = l.end_time),
               max(m.app_version COLLATE "C") FILTER (WHERE m."timestamp" = l.end_time),
               max((m.attributes ->> 'platform') COLLATE "C") FILTER (WHERE m."timestamp" = l.end_time),
               max(m.location COLLATE "C") FILTER (WHERE m."timestamp" = l.end_time),
               true
        FROM metrics_ingest.metrics m
        JOIN latest l ON l.user_id = m.user_id AND l.session_id = m.session_id
        GROUP BY m.user_id, m.session_id, l.end_time
        RETURNING 1)
    SELECT count(*) INTO n FROM fresh;
    relation := 'sessions';
    rows_written := n;
    RETURN NEXT;

    -- Archived parts stand for rows no longer held; every other part counts held rows (on an
    -- archived day too: rows stored for it after a retention was lengthened).
    WITH gone AS (
        DELETE FROM metrics_ingest.daily_parts d WHERE NOT d.archived
        RETURNING 1),
    fresh AS (
        INSERT INTO metrics_ingest.daily_parts (day, metric_type, samples, total, min, max)
        SELECT (m."timestamp" AT TIME ZONE 'UTC')::date, m.metric_type, count(*),
               sum(m.metric_value), min(m.metric_value), max(m.metric_value)
        FROM metrics_ingest.metrics m
        GROUP BY 1, 2
        RETURNING 1)
    SELECT count(*) INTO n FROM fresh;
    relation := 'daily_totals';
    rows_written := n;
    RETURN NEXT;
END
$$;

-- The right to erasure: removes one user from metrics, users, sessions and the dead
-- letters that carry their user_id, and recomputes the daily totals of the (day, metric
-- type) pairs their rows were in, from the rows that remain. Days whose raw rows
-- retention has dropped keep those rows' totals (the archived parts): an anonymous
-- aggregate with no user in it.
-- Rows of this user that arrive afterwards are stored again, as any new data is.
CREATE FUNCTION metrics_ingest.forget_user(user_id text)
RETURNS TABLE (relation text, removed bigint)
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    who ALIAS FOR $1;
    days date[];
    types text[];
    n bigint;
    n_metrics bigint;
    n_users bigint;
    n_sessions bigint;
    n_rejected bigint;
BEGIN
    LOCK TABLE metrics_ingest.metric_types IN SHARE UPDATE EXCLUSIVE MODE;
    -- One statement, one snapshot: the rows, sessions and dead letters it removes are those
    -- of the same committed calls (a call of this user committing meanwhile keeps both its
    -- rows and its sessions, as if it came afterwards).
    WITH gone_metrics AS (
        DELETE FROM metrics_ingest.metrics m WHERE m.user_id = who
        RETURNING (m."timestamp" AT TIME ZONE 'UTC')::date AS day, m.metric_type),
    gone_users AS (DELETE FROM metrics_ingest.users u WHERE u.user_id = who RETURNING 1),
    gone_sessions AS (
        DELETE FROM metrics_ingest.session_parts s WHERE s.user_id = who RETURNING s.session_id),
    gone_rejected AS (DELETE FROM metrics_ingest.rejected r WHERE r.user_id = who RETURNING 1),
    pairs AS (SELECT g.day, g.metric_type FROM gone_metrics g GROUP BY g.day, g.metric_type)
    SELECT (SELECT count(*) FROM gone_metrics), (SELECT count(*) FROM gone_users),
           (SELECT count(DISTINCT g.session_id) FROM gone_sessions g),
           (SELECT count(*) FROM gone_rejected),
           (SELECT array_agg(p.day) FROM pairs p), (SELECT array_agg(p.metric_type) FROM pairs p)
    INTO n_metrics, n_users, n_sessions, n_rejected, days, types;
    FOR relation, removed IN VALUES ('metrics', n_metrics), ('users', n_users),
                                    ('sessions', n_sessions), ('rejected', n_rejected) LOOP
        RETURN NEXT;
    END LOOP;

    -- One statement, one snapshot: the delta rows it deletes and the metrics it sums are
    -- those of the same committed calls; a call still running adds its delta afterwards.
    -- Archived parts (rows retention dropped) are left as they are: an anonymous aggregate.
    -- The other parts count held rows, also on an archived day (rows stored for it after a
    -- retention was lengthened: 0.3.2 left the erased user's values there).
    WITH pairs AS (
        SELECT x.day, x.metric_type FROM ROWS FROM (unnest(days), unnest(types)) AS x(day, metric_type)),
    gone AS (
        DELETE FROM metrics_ingest.daily_parts d USING pairs p
        WHERE d.day = p.day AND d.metric_type = p.metric_type AND NOT d.archived
        RETURNING 1),
    fresh AS (
        INSERT INTO metrics_ingest.daily_parts (day, metric_type, samples, total, min, max)
        SELECT p.day, p.metric_type, count(*), sum(m.metric_value), min(m.metric_value), max(m.metric_value)
        FROM pairs p
        JOIN metrics_ingest.metrics m ON m.metric_type = p.metric_type
             AND m."timestamp" >= (p.day::timestamp AT TIME ZONE 'UTC')
             AND m."timestamp" < ((p.day + 1)::timestamp AT TIME ZONE 'UTC')
        GROUP BY p.day, p.metric_type
        RETURNING 1)
    SELECT count(*) INTO n FROM pairs;
    relation := 'daily_totals';
    removed := n;
    RETURN NEXT;
END
$$;

REVOKE ALL ON FUNCTION metrics_ingest.compact_rollups() FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.rebuild_rollups() FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.forget_user(text) FROM PUBLIC;
REVOKE ALL ON metrics_ingest.users, metrics_ingest.session_parts, metrics_ingest.daily_parts,
    metrics_ingest.sessions, metrics_ingest.daily_totals FROM PUBLIC;

-- Readers see sessions, totals and who has a profile, but not the profile itself;
-- metrics_ingest_pii_reader reads name and email too.
GRANT SELECT ON metrics_ingest.sessions, metrics_ingest.daily_totals TO metrics_ingest_reader;
GRANT SELECT (user_id, created_at, updated_at, profile_time) ON metrics_ingest.users TO metrics_ingest_reader;
GRANT SELECT ON metrics_ingest.users TO metrics_ingest_pii_reader;

-- rejected.element keeps each element as received, profile included: personal data. Readers
-- see every other column of a dead letter; metrics_ingest_pii_reader sees the element too.
REVOKE SELECT ON metrics_ingest.rejected FROM metrics_ingest_reader;
GRANT SELECT (id, rejected_at, rejected_by, source, ordinal, field, error, sqlstate, user_id, event_id)
    ON metrics_ingest.rejected TO metrics_ingest_reader;
GRANT SELECT ON metrics_ingest.rejected TO metrics_ingest_pii_reader;
