-- metrics_ingest 0.1.1 -> 0.2.0. Each change below is also in the install script
-- (sql/schema.sql, sql/api.sql, sql/comments.sql); the upgrade test checks that an
-- upgraded catalog equals a fresh one.
\echo Use "ALTER EXTENSION metrics_ingest UPDATE TO '0.2.0'" to load this file. \quit

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
