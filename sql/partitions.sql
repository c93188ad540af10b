-- metrics_ingest: time partitions made on demand, and their upkeep.
--
-- metrics is PARTITION BY RANGE ("timestamp"). A partition is made when a row's time falls
-- in none (by partition_for, which ingest_json and insert_metric call), as CREATE TABLE
-- followed by ATTACH PARTITION: ATTACH takes SHARE UPDATE EXCLUSIVE on metrics, which does
-- not conflict with the ROW EXCLUSIVE lock of ingest into existing partitions, where
-- CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE.

-- Every partition of metrics with its range, from the partition descriptor (the library),
-- not a query of the catalog: under REPEATABLE READ a query reads the catalog as of the
-- transaction's snapshot and misses partitions made since, and partition_for then made one
-- overlapping them (0.3.2). MINVALUE and MAXVALUE bounds (attached by hand) are -infinity
-- and infinity (0.3.2 listed them as NULL).
CREATE FUNCTION metrics_ingest.partitions()
RETURNS TABLE (partition regclass, lower timestamptz, upper timestamptz)
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'partitions_wrapper';

-- A name in the extension's schema that no relation (table or index) has yet: base itself,
-- else base_2, base_3, ... A table a DBA detached and kept, or renamed with its indexes,
-- keeps names a new partition would otherwise take (since 0.3.2).
CREATE FUNCTION metrics_ingest.unused_name(base text)
RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidate text := base;
    n integer := 1;
BEGIN
    WHILE to_regclass(format('metrics_ingest.%I', candidate)) IS NOT NULL LOOP
        n := n + 1;
        candidate := base || '_' || n;
    END LOOP;
    RETURN candidate;
END
$$;

-- The partition that holds rows of time ts, made if there is none. Partitions lie on a grid
-- of the current partition_interval from 2000-01-01 UTC, cut short where an older partition
-- of another width already covers part of the cell. Creators take SHARE UPDATE EXCLUSIVE on
-- metrics first (the lock ATTACH PARTITION takes anyway; ingest's ROW EXCLUSIVE does not
-- conflict with it, and a role without privileges on metrics cannot take it): a second
-- session needing the same partition waits for the first to commit, then finds it. If the
-- calling transaction rolls back, so does its partition. The tablespace and access method
-- are pinned: a writer's default_tablespace put partitions, made with the owner's rights, in
-- a tablespace the writer may not create in (0.3.2).
CREATE FUNCTION metrics_ingest.partition_for(ts timestamptz)
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

-- The width of partitions made from now on (existing ones keep theirs).
CREATE FUNCTION metrics_ingest.set_partition_interval(width interval)
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

-- Refuses a retention whose horizon, now() - keep, PostgreSQL cannot compute (a
-- timestamp before 4713 BC, e.g. '1000000 years'): every later ingest_json, insert_metric
-- and run_maintenance computes that horizon and would fail with it (since 0.3.1). As time
-- only moves forward, a horizon computable now stays computable.
CREATE FUNCTION metrics_ingest.check_horizon(keep interval, setting text)
RETURNS void
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    horizon timestamptz;
BEGIN
    -- '1 mon -29 days' is 1 day compared as a whole, but 1 March minus it is 2 March: a
    -- horizon in the future, which would drop current partitions (since 0.3.2).
    IF extract(year FROM keep) < 0 OR extract(month FROM keep) < 0 OR extract(day FROM keep) < 0
       OR keep - date_trunc('day', keep) < '0' THEN
        RAISE EXCEPTION 'metrics_ingest: % % has a negative part', setting, keep
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'every part of a retention must be positive, e.g. ''90 days''';
    END IF;
    horizon := now() - keep;
EXCEPTION WHEN datetime_field_overflow THEN
    RAISE EXCEPTION 'metrics_ingest: % % reaches before the earliest time PostgreSQL can hold', setting, keep
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'NULL keeps everything';
END
$$;

-- How long metrics are kept; NULL keeps everything (the default). Elements older than
-- now() - retention are rejected, and run_maintenance drops partitions entirely older.
CREATE FUNCTION metrics_ingest.set_retention(keep interval)
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

-- How long dead letters are kept; NULL keeps them (the default).
CREATE FUNCTION metrics_ingest.set_rejected_retention(keep interval)
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

-- Upkeep, meant for pg_cron: compacts the delta rows of sessions and daily totals, drops
-- every partition entirely older than the retention horizon (archiving those days' daily
-- totals), deletes dead letters older than rejected_retention, and says what it did.
-- Dropping a partition takes ACCESS EXCLUSIVE on metrics for a moment: it waits for
-- running ingest transactions and holds new ones back until it commits.
CREATE FUNCTION metrics_ingest.run_maintenance()
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

-- A change of settings reaches every backend's cached copy, as a change of metric_types does.
CREATE TRIGGER settings_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON metrics_ingest.settings
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_ingest.metric_types_changed();
ALTER TABLE metrics_ingest.settings ENABLE ALWAYS TRIGGER settings_changed;

REVOKE ALL ON FUNCTION metrics_ingest.partitions() FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.unused_name(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.partition_for(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.set_partition_interval(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.check_horizon(interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.set_retention(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.set_rejected_retention(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.run_maintenance() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION metrics_ingest.partitions() TO metrics_ingest_reader, metrics_ingest_writer;
