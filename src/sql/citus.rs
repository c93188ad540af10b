//! Citus: a distributed table's rows must reach its shards through the
//! executor (Citus's planner hooks), never the fast path's direct heap writes.

use pgrx::pg_sys;

/// Whether `relid` is distributed by Citus (placeholder until the detection lands).
pub fn is_distributed(_relid: pg_sys::Oid) -> bool {
    false
}
