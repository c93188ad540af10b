#!/usr/bin/env bash
# Roles for the PostgREST service of docker-compose.yml, which mounts this file
# into /docker-entrypoint-initdb.d/. Run once, by the postgres image's
# entrypoint, when it initialises an empty data directory (after
# 10-metrics-ingest.sql has created the extension and its roles).
#
#   authenticator        LOGIN NOINHERIT: PostgREST's connection role; by itself
#                        it can do nothing but switch to the roles granted to it.
#   metrics_ingest_http  NOLOGIN, granted metrics_ingest_writer: the role a JWT
#                        names ({"role": "metrics_ingest_http"}); it may call
#                        ingest_json and ingest(json) and nothing else.
#
# No anonymous role is created and PostgREST is given none (PGRST_DB_ANON_ROLE
# unset), so a request without a valid JWT is refused with 401.
# Written to work whether the entrypoint executes or sources it: it changes no
# shell options and does not call exit.

echo "metrics_ingest: creating the PostgREST roles (authenticator, metrics_ingest_http)"
psql -X -v ON_ERROR_STOP=1 \
    --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_DB:-postgres}" \
    -v authenticator_password="${PGRST_AUTHENTICATOR_PASSWORD:-authenticator}" <<'SQL'
CREATE ROLE metrics_ingest_http NOLOGIN;
GRANT metrics_ingest_writer TO metrics_ingest_http;
CREATE ROLE authenticator LOGIN NOINHERIT PASSWORD :'authenticator_password';
GRANT metrics_ingest_http TO authenticator;
SQL
