-- metrics_ingest: the SQL-facing functions. Each writing entry point is SECURITY DEFINER
-- (so writers need no table privileges), pins search_path (so objects a caller plants in
-- its own schemas change nothing), and is executable only by metrics_ingest_writer.

CREATE FUNCTION metrics_ingest.ingest_json(payload text, on_error text DEFAULT 'reject')
RETURNS TABLE (ordinal integer, status text, error text, field text, metrics_stored integer)
LANGUAGE c VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1000
AS 'MODULE_PATHNAME', 'ingest_json_text_wrapper';

CREATE FUNCTION metrics_ingest.ingest_json(payload json, on_error text DEFAULT 'reject')
RETURNS TABLE (ordinal integer, status text, error text, field text, metrics_stored integer)
LANGUAGE c VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1000
AS 'MODULE_PATHNAME', 'ingest_json_text_wrapper';

CREATE FUNCTION metrics_ingest.ingest_json(payload jsonb, on_error text DEFAULT 'reject')
RETURNS TABLE (ordinal integer, status text, error text, field text, metrics_stored integer)
LANGUAGE c VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1000
AS 'MODULE_PATHNAME', 'ingest_json_jsonb_wrapper';

-- Seed 000's procedure. The value may be text ('300', 'positive') or a number.
CREATE PROCEDURE metrics_ingest.insert_metric(
    "timestamp" timestamptz,
    user_id text,
    session_id text,
    metric_type text,
    metric_value text,
    device_id text DEFAULT NULL,
    app_version text DEFAULT NULL,
    location text DEFAULT NULL,
    sentiment_score double precision DEFAULT NULL,
    event_id text DEFAULT NULL,
    attributes jsonb DEFAULT NULL)
LANGUAGE c
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'insert_metric_text_wrapper';

CREATE PROCEDURE metrics_ingest.insert_metric(
    "timestamp" timestamptz,
    user_id text,
    session_id text,
    metric_type text,
    metric_value double precision,
    device_id text DEFAULT NULL,
    app_version text DEFAULT NULL,
    location text DEFAULT NULL,
    sentiment_score double precision DEFAULT NULL,
    event_id text DEFAULT NULL,
    attributes jsonb DEFAULT NULL)
LANGUAGE c
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'insert_metric_number_wrapper';

-- Keeps every backend's cached copy of the registry current: a change to metric_types
-- invalidates it at commit, the way PostgreSQL invalidates its own catalog caches.
CREATE FUNCTION metrics_ingest.metric_types_changed()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'metric_types_changed_wrapper';

CREATE TRIGGER metric_types_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON metrics_ingest.metric_types
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_ingest.metric_types_changed();
-- ALWAYS: a change applied by logical replication (session_replication_role = replica)
-- must reach the other backends' caches too.
ALTER TABLE metrics_ingest.metric_types ENABLE ALWAYS TRIGGER metric_types_changed;

REVOKE ALL ON FUNCTION metrics_ingest.ingest_json(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.ingest_json(json, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.ingest_json(jsonb, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE metrics_ingest.insert_metric(timestamptz, text, text, text, text, text, text, text, double precision, text, jsonb) FROM PUBLIC;
REVOKE ALL ON PROCEDURE metrics_ingest.insert_metric(timestamptz, text, text, text, double precision, text, text, text, double precision, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.metric_types_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION metrics_ingest.labels_are_valid(text, double precision, double precision, jsonb) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION metrics_ingest.ingest_json(text, text) TO metrics_ingest_writer;
GRANT EXECUTE ON FUNCTION metrics_ingest.ingest_json(json, text) TO metrics_ingest_writer;
GRANT EXECUTE ON FUNCTION metrics_ingest.ingest_json(jsonb, text) TO metrics_ingest_writer;
GRANT EXECUTE ON PROCEDURE metrics_ingest.insert_metric(timestamptz, text, text, text, text, text, text, text, double precision, text, jsonb) TO metrics_ingest_writer;
GRANT EXECUTE ON PROCEDURE metrics_ingest.insert_metric(timestamptz, text, text, text, double precision, text, text, text, double precision, text, jsonb) TO metrics_ingest_writer;

-- HTTP without application code (since 0.2.0): PostgREST passes a request body to a
-- function with a single unnamed json parameter as is, so POST /rpc/ingest with seed
-- 000's JSON array calls this and answers with the verdicts as a JSON array.
-- SECURITY INVOKER: it holds no privilege of its own; the caller needs EXECUTE on
-- ingest_json, which only metrics_ingest_writer has.
CREATE FUNCTION metrics_ingest.ingest(json)
RETURNS TABLE (ordinal integer, status text, error text, field text, metrics_stored integer)
LANGUAGE sql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT
SECURITY INVOKER SET search_path = pg_catalog, pg_temp
ROWS 1000
AS $ingest$ SELECT * FROM metrics_ingest.ingest_json($1, 'reject') $ingest$;

REVOKE ALL ON FUNCTION metrics_ingest.ingest(json) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION metrics_ingest.ingest(json) TO metrics_ingest_writer;
