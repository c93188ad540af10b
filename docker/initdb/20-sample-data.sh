#!/usr/bin/env bash
# Run by the postgres image's entrypoint after 10-metrics-ingest.sql, once,
# when it initialises an empty data directory. Loads scripts/sample_data.sql
# (copied into the image) when METRICS_INGEST_SAMPLE_DATA is true/1/yes/on.
# Written to work whether the entrypoint executes or sources it: it changes no
# shell options and does not call exit.

case "${METRICS_INGEST_SAMPLE_DATA:-false}" in
    1 | true | TRUE | yes | on)
        echo "metrics_ingest: loading sample data into database ${POSTGRES_DB:-postgres}"
        psql -X -v ON_ERROR_STOP=1 \
            --username "${POSTGRES_USER:-postgres}" \
            --dbname "${POSTGRES_DB:-postgres}" \
            -f /usr/share/metrics_ingest/sample_data.sql
        ;;
    *)
        echo "metrics_ingest: METRICS_INGEST_SAMPLE_DATA is off; no sample data loaded"
        ;;
esac
