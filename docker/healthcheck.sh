#!/bin/sh
# Container health for metrics_ingest (installed as
# /usr/local/bin/metrics-ingest-healthcheck; used by the Dockerfile's
# HEALTHCHECK and docker-compose.yml).
#
# Healthy when
#   1. the server accepts TCP connections: pg_isready on 127.0.0.1. The
#      entrypoint's temporary init-time server listens on the unix socket
#      only, so this is false until initialisation (extension, sample data)
#      has finished and the real server is up; and
#   2. the extension exists in $POSTGRES_DB (query over the local socket).
set -eu

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}

pg_isready -q -h 127.0.0.1 -p 5432 -U "$user" -d "$db"
found=$(psql -X -q -U "$user" -d "$db" -tAc \
    "SELECT count(*) FROM pg_extension WHERE extname = 'metrics_ingest'")
[ "$found" = 1 ]
