# PostgreSQL 15 with the metrics_ingest extension.
#
#   docker compose up --build          (see docker-compose.yml)
#   docker build -t metrics_ingest .
#
# The builder installs and builds through the same scripts/lib.sh functions
# that scripts/setup.sh and CI use (Debian packages, cargo-pgrx 0.18.1,
# `cargo pgrx init` against Debian's PostgreSQL 15, release install); the
# final image is the official postgres:15 image plus the extension's files.

# ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# Toolchain first, in its own layers: rebuilt only when lib.sh changes.
COPY scripts/lib.sh scripts/lib.sh
RUN bash scripts/lib.sh ensure_packages ensure_cargo_pgrx ensure_pgrx_init \
    && rm -rf /var/lib/apt/lists/*

# Then the extension, staged under /out with the image's directory layout.
COPY . .
RUN bash scripts/lib.sh install_extension \
    && pkglibdir="$(/usr/lib/postgresql/15/bin/pg_config --pkglibdir)" \
    && sharedir="$(/usr/lib/postgresql/15/bin/pg_config --sharedir)" \
    && mkdir -p "/out${pkglibdir}" "/out${sharedir}/extension" \
    && cp "${pkglibdir}/metrics_ingest.so" "/out${pkglibdir}/" \
    && cp "${sharedir}"/extension/metrics_ingest* "/out${sharedir}/extension/" \
    && ls -lR /out

# ---------------------------------------------------------------------------
# Same Debian release (bookworm) as the builder, so the same glibc.
FROM postgres:15-bookworm

# The extension: /usr/lib/postgresql/15/lib/metrics_ingest.so and
# /usr/share/postgresql/15/extension/metrics_ingest*.
COPY --from=builder /out/ /

# Run by the entrypoint on first start (empty data directory):
# 10-metrics-ingest.sql creates the extension in $POSTGRES_DB,
# 20-sample-data.sh loads the sample data if METRICS_INGEST_SAMPLE_DATA=true.
COPY docker/initdb/10-metrics-ingest.sql docker/initdb/20-sample-data.sh /docker-entrypoint-initdb.d/
COPY scripts/sample_data.sql /usr/share/metrics_ingest/sample_data.sql

ENV METRICS_INGEST_SAMPLE_DATA=false

# Healthy once the real server (not the init-time one) is up and the
# extension exists; see docker/healthcheck.sh.
COPY docker/healthcheck.sh /usr/local/bin/metrics-ingest-healthcheck
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=30 \
    CMD ["metrics-ingest-healthcheck"]
