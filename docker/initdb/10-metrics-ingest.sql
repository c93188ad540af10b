-- Run by the postgres image's entrypoint, once, when it initialises an empty
-- data directory, in the database named by POSTGRES_DB.
CREATE EXTENSION IF NOT EXISTS metrics_ingest;
