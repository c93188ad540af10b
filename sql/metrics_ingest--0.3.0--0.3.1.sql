-- metrics_ingest 0.3.0 -> 0.3.1
--
-- set_retention and set_rejected_retention refuse (22023) a retention whose horizon,
-- now() - keep, PostgreSQL cannot compute (before 4713 BC, e.g. '1000000 years'). 0.3.0
-- stored such a value, after which every ingest_json, insert_metric and run_maintenance
-- failed with 22008 "timestamp out of range". A stored one is left as it is: call
-- set_retention again (or with NULL) to replace it.

CREATE FUNCTION metrics_ingest.check_horizon(keep interval, setting text)
RETURNS void
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    horizon timestamptz;
BEGIN
    horizon := now() - keep;
EXCEPTION WHEN datetime_field_overflow THEN
    RAISE EXCEPTION 'metrics_ingest: % % reaches before the earliest time PostgreSQL can hold', setting, keep
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'NULL keeps everything';
END
$$;
REVOKE ALL ON FUNCTION metrics_ingest.check_horizon(interval, text) FROM PUBLIC;
COMMENT ON FUNCTION metrics_ingest.check_horizon(interval, text) IS
    'Used by set_retention and set_rejected_retention: refuses (22023) a retention whose horizon now() - keep is before the earliest time PostgreSQL can hold';

CREATE OR REPLACE FUNCTION metrics_ingest.set_retention(keep interval)
RETURNS interval
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
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
SET search_path = pg_catalog, pg_temp
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
