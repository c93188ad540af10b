-- metrics_ingest 0.3.2 -> 0.3.3
--
-- Found by hostile use; every change is in a function, no table changes:
-- - partitions() reads the partition descriptor (the library) instead of querying the
--   catalog, which under REPEATABLE READ reads the transaction's snapshot: partition_for
--   then missed partitions made since and made one overlapping them (42P17, the whole call
--   failed). MINVALUE and MAXVALUE bounds are listed as -infinity and infinity, not NULL,
--   so partition_for called for a time inside such a partition finds it.
-- - partition_for: a relation named like the partition it would make always leaves the
--   name to it (a partition of a partition of that name was taken for the new one: 55000).
--   It pins default_tablespace and default_table_access_method: a writer's
--   default_tablespace placed partitions, made with the owner's rights, where the writer may
--   not create anything. partitions() lists a partition being detached (DETACH ...
--   CONCURRENTLY not finished), so its range is not taken for a new one.
-- - set_partition_interval refuses a width that is not whole hours or has a negative part
--   ('1 hour 0.5 seconds', '1 day -1 hour').
-- - run_maintenance drops a foreign table past the horizon with DROP FOREIGN TABLE (DROP
--   TABLE failed the whole run, every run).
-- - rebuild_rollups keeps the summaries of sessions retention dropped rows of (that began
--   before the oldest partition held, or lie on an archived day), as it keeps archived days
--   (it deleted them, or recounted them from the rows left).
-- - Rows stored for an archived day after a retention was lengthened are counted in daily
--   parts of their own: compact_rollups no longer folds them into the archived part, and
--   forget_user and rebuild_rollups recompute them (forget_user left an erased user's values
--   there, rebuild_rollups left such rows out).
-- - forget_user, rebuild_rollups, run_maintenance and the set_* functions are SECURITY
--   DEFINER (with the pinned search_path they had), so that a role granted EXECUTE, as the
--   README shows, can run them without privileges on the tables.

CREATE OR REPLACE FUNCTION metrics_ingest.partitions()
RETURNS TABLE (partition regclass, lower timestamptz, upper timestamptz)
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'partitions_wrapper';

CREATE OR REPLACE FUNCTION metrics_ingest.partition_for(ts timestamptz)
RETURNS regclass
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
SET "DateStyle" = 'ISO'
SET default_tablespace = ''
SET default_table_access_method = 'heap'
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
    LOCK TABLE metrics_ingest.metrics IN SHARE UPDATE EXCLUSIVE MODE;
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
    -- A relation of that name (a table a DBA detached and kept, a partition of other bounds,
    -- a partition of a partition) leaves the name to it: the new one takes another.
    IF to_regclass(format('metrics_ingest.%I', name)) IS NOT NULL THEN
        name := metrics_ingest.unused_name(name);
    END IF;
    EXECUTE format('CREATE TABLE metrics_ingest.%I (LIKE metrics_ingest.metrics '
                   'INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)', name);
    -- The keys and indexes of every partition (see metrics in sql/schema.sql). user_id and
    -- "timestamp" lead every key: one user's metrics over a time range is the commonest
    -- query, and the table can be distributed by user without dropping a constraint.
    EXECUTE format('ALTER TABLE metrics_ingest.%I ADD CONSTRAINT %I PRIMARY KEY (user_id, "timestamp", id)',
                   name, metrics_ingest.unused_name(name || '_pkey'));
    -- Idempotency: the same event (user, event_id, metric type, timestamp) is stored at
    -- most once. Partial, so rows without an event_id cost nothing here.
    EXECUTE format('CREATE UNIQUE INDEX %I ON metrics_ingest.%I (user_id, event_id, metric_type, "timestamp") '
                   'WHERE event_id IS NOT NULL', metrics_ingest.unused_name(name || '_event_key'), name);
    -- One session's metrics, in time order.
    EXECUTE format('CREATE INDEX %I ON metrics_ingest.%I (session_id, "timestamp") WHERE session_id IS NOT NULL',
                   metrics_ingest.unused_name(name || '_session_idx'), name);
    -- One metric type over time (dashboards, aggregates per type).
    EXECUTE format('CREATE INDEX %I ON metrics_ingest.%I (metric_type, "timestamp")',
                   metrics_ingest.unused_name(name || '_type_time_idx'), name);
    -- Time ranges across all users: rows arrive roughly in time order, so BRIN is tiny.
    EXECUTE format('CREATE INDEX %I ON metrics_ingest.%I USING brin ("timestamp")',
                   metrics_ingest.unused_name(name || '_time_brin'), name);
    EXECUTE format('ALTER TABLE metrics_ingest.metrics ATTACH PARTITION metrics_ingest.%I '
                   'FOR VALUES FROM (%L) TO (%L)', name, cell_lower, cell_upper);
    RETURN format('metrics_ingest.%I', name)::regclass;
END
$$;

CREATE OR REPLACE FUNCTION metrics_ingest.set_partition_interval(width interval)
RETURNS interval
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Whole hours, no part negative: '1 hour 0.5 seconds' named its partitions for a time
    -- they did not start at, and '1 day -1 hour' was a 23-hour width (0.3.2 took both).
    IF date_part('month', width) <> 0 OR date_part('year', width) <> 0
       OR date_part('day', width) < 0 OR width - date_trunc('day', width) < '0'
       OR extract(epoch FROM width - date_trunc('day', width)) % 3600 <> 0
       OR width < '1 hour' OR width > '366 days' THEN
        RAISE EXCEPTION 'metrics_ingest: partition interval must be between 1 hour and 366 days, in whole days and hours, not %', width
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'months vary in length; use days, e.g. ''7 days''';
    END IF;
    INSERT INTO metrics_ingest.settings AS s (partition_interval) VALUES (width)
    ON CONFLICT (singleton) DO UPDATE SET partition_interval = excluded.partition_interval;
    RETURN width;
END
$$;

CREATE OR REPLACE FUNCTION metrics_ingest.set_retention(keep interval)
RETURNS interval
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF keep <= '0' THEN
        RAISE EXCEPTION 'metrics_ingest: retention must be positive or NULL, not %', keep
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM metrics_ingest.check_horizon(keep, 'retention');
    INSERT INTO metrics_ingest.settings AS s (retention) VALUES (keep)
    ON CONFLICT (singleton) DO UPDATE SET retention = excluded.retention;
    RETURN keep;
END
$$;

CREATE OR REPLACE FUNCTION metrics_ingest.set_rejected_retention(keep interval)
RETURNS interval
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF keep <= '0' THEN
        RAISE EXCEPTION 'metrics_ingest: rejected retention must be positive or NULL, not %', keep
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM metrics_ingest.check_horizon(keep, 'rejected retention');
    INSERT INTO metrics_ingest.settings AS s (rejected_retention) VALUES (keep)
    ON CONFLICT (singleton) DO UPDATE SET rejected_retention = excluded.rejected_retention;
    RETURN keep;
END
$$;

CREATE OR REPLACE FUNCTION metrics_ingest.run_maintenance()
RETURNS TABLE (action text, object text, detail text)
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "TimeZone" = 'UTC'
SET "DateStyle" = 'ISO'
AS $$
DECLARE
    settings metrics_ingest.settings;
    horizon timestamptz;
    p record;
    n bigint;
    dropped_before timestamptz;
    held_from timestamptz;
BEGIN
    -- Not beside a forget_user or rebuild_rollups, which recompute the daily totals
    -- of days this may archive (the rollups' lock, see compact_rollups).
    LOCK TABLE metrics_ingest.metric_types IN SHARE UPDATE EXCLUSIVE MODE;
    RETURN QUERY SELECT * FROM metrics_ingest.compact_rollups();
    SELECT * INTO settings FROM metrics_ingest.settings;
    IF settings.retention IS NOT NULL THEN
        horizon := now() - settings.retention;
        -- A foreign table a DBA attached is dropped as one (DROP TABLE refuses it: 0.3.2
        -- failed the whole run), which leaves its remote rows where they are.
        FOR p IN SELECT x.partition::text AS name, x.lower, x.upper,
                        coalesce((SELECT c.relkind = 'f' FROM pg_class c WHERE c.oid = x.partition), false) AS foreign_table
                 FROM metrics_ingest.partitions() x WHERE x.upper <= horizon ORDER BY x.lower LOOP
            EXECUTE format('DROP %s %s', CASE WHEN p.foreign_table THEN 'FOREIGN TABLE' ELSE 'TABLE' END, p.name);
            action := 'dropped partition';
            object := p.name;
            detail := format('[%s, %s) is older than the retention horizon %s (retention %s)',
                             p.lower, p.upper, horizon, settings.retention);
            dropped_before := greatest(dropped_before, p.upper);
            RETURN NEXT;
        END LOOP;
        -- The daily totals of those days stay, as an archive of what metrics no longer holds:
        -- a day once none of it is held (partitions narrower than a day, or not cut at
        -- midnight, leave a day partly held until the rest of it is dropped; until then
        -- forget_user and rebuild_rollups recompute it from the rows held).
        IF dropped_before IS NOT NULL THEN
            held_from := least(horizon,
                               (SELECT min(coalesce(x.lower, '-infinity')) FROM metrics_ingest.partitions() x));
            UPDATE metrics_ingest.daily_parts d SET archived = true
            WHERE NOT d.archived
              AND ((d.day + 1)::timestamp AT TIME ZONE 'UTC') <= held_from;
            GET DIAGNOSTICS n = ROW_COUNT;
            action := 'archived daily totals';
            object := 'metrics_ingest.daily_parts';
            detail := format('%s rows of days before %s, whose raw rows are dropped', n,
                             date_trunc('day', held_from));
            RETURN NEXT;
        END IF;
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

CREATE OR REPLACE FUNCTION metrics_ingest.compact_rollups()
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

CREATE OR REPLACE FUNCTION metrics_ingest.rebuild_rollups()
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

CREATE OR REPLACE FUNCTION metrics_ingest.forget_user(user_id text)
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
