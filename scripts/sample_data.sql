-- Sample data for metrics_ingest (loaded by scripts/setup.sh into a newly
-- created database, and by scripts/test.sh's smoke step).
--
--   psql -h 127.0.0.1 -p 54329 -U postgres -f scripts/sample_data.sql metrics
--
-- 1. The seed examples, each ingested as-is by one call.
-- 2. 10,000 generated events (500 users, 2,000 sessions, the four metric
--    types, 2024 timestamps), built in SQL and sent as one JSON text batch.
-- Fails (psql exits non-zero) if any element comes back 'rejected'.
-- Everything runs in one transaction: it is stored whole or not at all.
-- Generated events carry event_id 'gen-000001'..'gen-010000'.

\set ON_ERROR_STOP on
\pset footer off

BEGIN;

\echo '==> seed examples'

-- Every call's outcome rows, labelled, to display and check at the end.
CREATE TEMP TABLE sample_outcomes AS
SELECT 'seed 1: array, long form, metric_value "1"'::text AS sample, o.*
FROM metrics_ingest.ingest_json($json$[{"timestamp": "2024-08-12T12:00:00+00:00", "user_id": "user456", "session_id": "session789", "metric_type": "microphone_used", "metric_value": "1", "device_id": "device012", "app_version": "1.0.1", "location": "Los Angeles", "sentiment_score": 0.8}]$json$) AS o;

INSERT INTO sample_outcomes
SELECT 'seed 2: one object, "value", uuid user', o.*
FROM metrics_ingest.ingest_json($json${"user_id":"b2a7465b-5d83-40c6-b8b6-2f8f15cbf23d","metric_type":"talked_time","value":12.34,"timestamp":"2024-08-08T12:34:56Z"}$json$) AS o;

INSERT INTO sample_outcomes
SELECT 'seed 3: wide form, numeric ids, epoch seconds', o.*
FROM metrics_ingest.ingest_json($json${"user_id": 1, "name": "John Doe", "email": "john.doe@example.com", "session_id": 1, "talked_time": 120, "microphone_used": true, "speaker_used": true, "voice_sentiment": "positive", "timestamp": 1622558400}$json$) AS o;

INSERT INTO sample_outcomes
SELECT 'seed 4: wide form, string ids', o.*
FROM metrics_ingest.ingest_json($json${"user_id": "u-1001", "session_id": "s-2001", "timestamp": 1722470400, "talked_time": 95, "microphone_used": true, "speaker_used": false, "voice_sentiment": "neutral"}$json$) AS o;

\echo '==> seed 0: CALL insert_metric'
SET search_path = metrics_ingest, public;
CALL insert_metric('2024-08-12 12:00:00'::TIMESTAMP, 'user123'::VARCHAR, 'session456'::VARCHAR, 'talked_time'::VARCHAR, '300'::VARCHAR, 'device789'::VARCHAR, '1.0.0'::VARCHAR, 'New York'::VARCHAR, 0.9::FLOAT);
RESET search_path;

\echo '==> generated batch: 10,000 events'

-- Deterministic: every value is a function of the event number n, so the
-- batch is identical on every run (and its event_ids make a re-run a no-op).
-- Session s = 1..2000 (n = k * 2000 + s, k = 0..4: five events per session);
-- user u = 1..500 (4 sessions each, 2 devices each).
INSERT INTO sample_outcomes
SELECT 'generated: 10,000 events', o.*
FROM metrics_ingest.ingest_json((
    WITH ev AS (
        SELECT n,
               1 + (n - 1) % 2000 AS s,
               (n - 1) / 2000     AS k
        FROM generate_series(1, 10000) AS n
    ), ctx AS (
        SELECT n, s, k,
               1 + (s * 37) % 500 AS u,
               (ARRAY['talked_time', 'microphone_used', 'speaker_used', 'voice_sentiment'])[1 + (s + k) % 4]
                   AS metric_type,
               -- sessions start on a minute of 2024 (Jan 1 .. Dec 30), events follow
               timestamp '2024-01-01 00:00:00'
                   + make_interval(mins => (s * 7717) % 525000)
                   + make_interval(secs => k * (30 + s % 90)) AS ts
        FROM ev
    )
    SELECT json_agg(json_build_object(
               'event_id',        format('gen-%s', lpad(n::text, 6, '0')),
               'timestamp',       to_char(ts, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'user_id',         format('user-%s', lpad(u::text, 4, '0')),
               'session_id',      format('session-%s', lpad(s::text, 5, '0')),
               'metric_type',     metric_type,
               'metric_value',    CASE metric_type
                   WHEN 'talked_time' THEN
                       to_json(round(((n * 7919) % 360000) / 100.0, 2))           -- seconds, 0..3599.99
                   WHEN 'voice_sentiment' THEN
                       CASE WHEN n % 2 = 0
                            THEN to_json((ARRAY['negative', 'neutral', 'positive'])[1 + (n / 2) % 3])
                            ELSE to_json(round((((n * 6007) % 2001) - 1000) / 1000.0, 3))  -- -1..1
                       END
                   ELSE  -- microphone_used / speaker_used: true/false, or 0/1 every third event
                       CASE WHEN n % 3 = 0
                            THEN to_json(CASE WHEN (n * 31) % 10 < 8 THEN 1 ELSE 0 END)
                            ELSE to_json((n * 31) % 10 < 8)
                       END
               END,
               'device_id',       format('device-%s', lpad((u * 2 + s % 2)::text, 4, '0')),
               'app_version',     (ARRAY['1.0.0', '1.0.1', '1.1.0', '1.2.0', '1.2.1', '2.0.0'])[1 + (s * 11 / 7) % 6],
               'location',        (ARRAY['New York', 'Los Angeles', 'São Paulo', 'Zürich', 'Kraków',
                                         'London', 'Montréal', 'Berlin', 'Malmö', 'Tokyo',
                                         'Reykjavík', 'Bogotá', 'Düsseldorf', 'Łódź', 'Sydney',
                                         'Toronto'])[1 + (u * 7) % 16],
               'sentiment_score', round((((n * 4273) % 2001) - 1000) / 1000.0, 3)  -- -1..1
           ) ORDER BY n)::text
    FROM ctx
)) AS o;

\echo '==> outcomes'
SELECT sample, status, count(*) AS elements
FROM sample_outcomes
GROUP BY sample, status
ORDER BY sample LIKE 'generated%', sample, status;

-- Fail loudly: every seed example must be stored, and so must every
-- generated event (they are all valid by construction). Show the rejected
-- elements first: the transaction is rolled back after the error.
SELECT count(*) > 0 AS sample_any_rejected
FROM sample_outcomes
WHERE status::text = 'rejected' \gset
\if :sample_any_rejected
\echo '==> REJECTED elements (first 50):'
SELECT * FROM sample_outcomes WHERE status::text = 'rejected' LIMIT 50;
\endif

DO $check$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(format('%s (%s)', sample, n), '; ')
    INTO bad
    FROM (SELECT sample, count(*) AS n
          FROM sample_outcomes
          WHERE status::text = 'rejected'
          GROUP BY sample) AS r;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'sample_data.sql: rejected elements: %', bad
            USING HINT = 'Nothing was committed: the whole script is one transaction.';
    END IF;
END
$check$;

COMMIT;

\echo '==> sample data loaded'
