-- Catalog documentation (since 0.1.1): what \d+ and \df+ show about each object.
COMMENT ON TABLE metrics_ingest.metrics IS
    'One row per metric observation. Written by ingest_json and insert_metric; see the README for the columns.';
COMMENT ON COLUMN metrics_ingest.metrics.metric_label IS
    'The label as sent for label-valued metrics (e.g. positive), whose score is in metric_value';
COMMENT ON COLUMN metrics_ingest.metrics.event_id IS
    'The client''s idempotency key: (user_id, event_id, metric_type, timestamp) is stored at most once';
COMMENT ON COLUMN metrics_ingest.metrics.attributes IS
    'Fields of the element that the schema does not know, kept rather than dropped';
COMMENT ON TABLE metrics_ingest.metric_types IS
    'The registry of metric types and how each value is validated. Add one with a single INSERT.';
COMMENT ON TABLE metrics_ingest.rejected IS
    'Dead letters: every element ingest_json refused, as received, with the field and the reason';
COMMENT ON COLUMN metrics_ingest.rejected.event_id IS
    'The element''s event_id when readable; an element with one is kept once per exact text (re-sending it adds no row)';
COMMENT ON COLUMN metrics_ingest.rejected.user_id IS
    'The element''s user_id when readable (a JSON object with a valid user_id), else NULL';
COMMENT ON FUNCTION metrics_ingest.ingest_json(text, text) IS
    'Validates and stores a JSON array of metric events (or one object); returns one verdict per element';
COMMENT ON FUNCTION metrics_ingest.ingest_json(json, text) IS
    'As ingest_json(text, text), for json values';
COMMENT ON FUNCTION metrics_ingest.ingest_json(jsonb, text) IS
    'As ingest_json(text, text), for jsonb values (duplicate keys already merged by jsonb)';
COMMENT ON PROCEDURE metrics_ingest.insert_metric(timestamptz, text, text, text, text, text, text, text, double precision, text, jsonb) IS
    'Stores one metric event, validated like ingest_json; raises a class-22 error naming the field';
COMMENT ON PROCEDURE metrics_ingest.insert_metric(timestamptz, text, text, text, double precision, text, text, text, double precision, text, jsonb) IS
    'As insert_metric with a text value, for numeric values';
COMMENT ON TABLE metrics_ingest.settings IS
    'Upkeep settings (one row): partition width, retention of metrics and of dead letters. Change with set_partition_interval, set_retention, set_rejected_retention.';
COMMENT ON FUNCTION metrics_ingest.partitions() IS
    'Every partition of metrics with its time range [lower, upper)';
COMMENT ON FUNCTION metrics_ingest.partition_for(timestamptz) IS
    'The partition holding a time, made (CREATE TABLE, then ATTACH PARTITION) if there is none; called by ingest_json and insert_metric';
COMMENT ON FUNCTION metrics_ingest.set_partition_interval(interval) IS
    'Sets the width of partitions made from now on (1 hour to 366 days, no months); existing partitions keep theirs';
COMMENT ON FUNCTION metrics_ingest.check_horizon(interval, text) IS
    'Used by set_retention and set_rejected_retention: refuses (22023) a retention with a negative part, or whose horizon now() - keep is before the earliest time PostgreSQL can hold';
COMMENT ON FUNCTION metrics_ingest.unused_name(text) IS
    'Used by partition_for: a name in the extension''s schema no relation has yet (base, else base_2, base_3, ...)';
COMMENT ON FUNCTION metrics_ingest.set_retention(interval) IS
    'Sets how long metrics are kept (NULL: forever). Older elements are rejected; run_maintenance drops older partitions';
COMMENT ON FUNCTION metrics_ingest.set_rejected_retention(interval) IS
    'Sets how long dead letters are kept (NULL: forever); run_maintenance deletes older ones';
COMMENT ON FUNCTION metrics_ingest.run_maintenance() IS
    'Upkeep for pg_cron: compacts the delta rows of sessions and daily totals, drops partitions older than the retention (archiving their daily totals), deletes old dead letters; returns what it did';
COMMENT ON FUNCTION metrics_ingest.labels_are_valid(text, double precision, double precision, jsonb) IS
    'The CHECK on metric_types.labels: finite numeric scores within the bounds, labels the validator can match (not numeric-looking, not equal ignoring case), labels only on score types. Like every function here, not executable by PUBLIC: metric types are added by the extension''s owner';
COMMENT ON FUNCTION metrics_ingest.ingest(json) IS
    'ingest_json(payload, ''reject'') under one unnamed json parameter: the entry point PostgREST gives a raw request body (POST /rpc/ingest)';
COMMENT ON TABLE metrics_ingest.users IS
    'One row per user whose profile (name, email) is known: from elements carrying one, or inserted by the owner. metrics_ingest_reader cannot read name or email; metrics_ingest_pii_reader can.';
COMMENT ON COLUMN metrics_ingest.users.profile_time IS
    'Timestamp of the element that set the name and email held (for an owner''s INSERT, when it was made): an older element never overwrites the profile';
COMMENT ON VIEW metrics_ingest.sessions IS
    'One row per (user_id, session_id): first and last metric time, metric count, and device, app version, platform and location of the latest metric. Kept exact by ingest.';
COMMENT ON VIEW metrics_ingest.daily_totals IS
    'Per UTC day and metric type: samples, total, min, max, mean of metric_value. Kept exact by ingest; days dropped by retention stay as an archive.';
COMMENT ON TABLE metrics_ingest.session_parts IS
    'Delta rows behind the sessions view: one per session per ingest call, compacted by run_maintenance. Read the view.';
COMMENT ON TABLE metrics_ingest.daily_parts IS
    'Delta rows behind the daily_totals view: one per (day, metric type) per ingest call, compacted by run_maintenance. Read the view.';
COMMENT ON FUNCTION metrics_ingest.forget_user(text) IS
    'Erases one user: metrics, users, sessions and dead letters with that user_id; recomputes the affected daily totals; returns what it removed per relation';
COMMENT ON FUNCTION metrics_ingest.rebuild_rollups() IS
    'Recomputes sessions and daily totals from metrics (after metrics was changed other than by ingest); archived days are kept';
COMMENT ON FUNCTION metrics_ingest.compact_rollups() IS
    'Folds the delta rows of sessions and daily totals into one per key; run_maintenance calls it';
