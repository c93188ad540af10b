//! Citus: whether a table is distributed.
//!
//! A Citus-distributed (or reference) table keeps no rows of its own on the
//! coordinator: its local relation is a shell, and rows written straight into
//! it, past the executor, would be invisible to every query and lost to the
//! cluster. The direct path must hand such a table to the INSERT path, where
//! Citus's planner routes each row to its shard. Citus records every table it
//! manages in `pg_catalog.pg_dist_partition` (logicalrelid regclass, one row per
//! distributed, reference or Citus-local table, and per partition of one); a
//! database without Citus has no such catalog, and then nothing is distributed.

use pgrx::pg_sys;
use pgrx::spi::Spi;

/// Does `relid` have a row in `pg_catalog.pg_dist_partition`?
///
/// Without Citus this is one syscache lookup (the catalog's name in
/// pg_catalog) and false; no error. With it, one indexed SPI query (Citus keeps
/// a unique index on logicalrelid). An unexpected answer counts as distributed:
/// the INSERT path is correct for every table, the direct path only for local ones.
// Called when the table's shape is planned (src/sql/table.rs).
pub fn is_distributed(relid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup by a NUL-terminated static name; nothing is kept.
    let catalog = unsafe {
        pg_sys::get_relname_relid(
            c"pg_dist_partition".as_ptr(),
            pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE),
        )
    };
    if catalog == pg_sys::InvalidOid {
        return false;
    }
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition \
         WHERE logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass)",
        &[relid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(true)
}

/// Citus's catalog as Citus defines it, for the tests (Citus is not installed
/// here): created in a test's transaction with allow_system_table_mods, and
/// rolled back with it.
#[cfg(any(test, feature = "pg_test"))]
pub const STAND_IN_PG_DIST_PARTITION: &str = "
    SET LOCAL allow_system_table_mods = on;
    CREATE TABLE pg_catalog.pg_dist_partition (
        logicalrelid regclass NOT NULL,
        partmethod \"char\" NOT NULL,
        partkey text,
        colocationid integer DEFAULT 0 NOT NULL,
        repmodel \"char\" DEFAULT 'c' NOT NULL,
        autoconverted boolean DEFAULT false);
    CREATE UNIQUE INDEX pg_dist_partition_logical_relid_index
        ON pg_catalog.pg_dist_partition USING btree (logicalrelid);";
