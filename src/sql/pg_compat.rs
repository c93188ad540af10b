//! The executor calls whose signatures or structures differ between the
//! PostgreSQL majors we build for, behind version-neutral functions.
//!
//! Every `#[cfg(feature = "pgNN")]` of the crate lives here; the fast path
//! (direct.rs) calls these functions and nothing version-specific. What
//! changed, and where:
//!
//! * 16: `ExecInsertIndexTuples` gained `onlySummarizing`. (Permissions moved
//!   from `RangeTblEntry.requiredPerms` into `RTEPermissionInfo`; the fast path
//!   needs no range table: it checks INSERT on metrics with pg_class_aclcheck.)
//! * 16: the partition strategy is an enum (`PartitionStrategy`), no longer a
//!   `char` with `#define`d values.
//! * 17: `CheckValidResultRel` gained the MERGE action list; `PGPROC.lxid`
//!   moved into `PGPROC.vxid`.
//! * 18: `CheckValidResultRel` also takes the ON CONFLICT action;
//!   `ExecCheckIndexConstraints` takes the TID of a tuple being updated; a
//!   `TupleDesc`'s attributes sit behind its compact attributes, reached only
//!   through `TupleDescAttr`; `ResultRelInfo.ri_ConstraintExprs` became
//!   `ri_CheckConstraintExprs`; `index_beginscan` takes scan instrumentation.
//!
//! pg15 and pg18 are built and tested (scripts/test.sh); pg16 and pg17 follow
//! pgrx 0.18.1's bindings for those majors but are not built here (no headers).

use std::ptr::null_mut;

use pgrx::pg_sys;

/// `CheckValidResultRel` for a plain INSERT (no ON CONFLICT clause, no MERGE).
///
/// # Safety
/// `rri` is an initialised result relation.
pub unsafe fn check_valid_insert(rri: *mut pg_sys::ResultRelInfo) {
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    pg_sys::CheckValidResultRel(rri, pg_sys::CmdType::CMD_INSERT);

    #[cfg(feature = "pg17")]
    pg_sys::CheckValidResultRel(rri, pg_sys::CmdType::CMD_INSERT, null_mut());

    #[cfg(feature = "pg18")]
    pg_sys::CheckValidResultRel(
        rri,
        pg_sys::CmdType::CMD_INSERT,
        pg_sys::OnConflictAction::ONCONFLICT_NONE,
        null_mut(),
    );
}

/// `ExecInsertIndexTuples` for a freshly inserted tuple (not an update, all
/// indexes, not only summarizing ones). With `no_dup_err`, a conflict in one
/// of `arbiters` sets `*conflict` instead of raising. Returns the list of
/// indexes needing a deferred recheck (the caller frees it).
///
/// # Safety
/// `rri`'s indexes are open; `slot` holds the tuple just inserted into `rri`.
pub unsafe fn insert_index_tuples(
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState,
    no_dup_err: bool,
    conflict: Option<&mut bool>,
    arbiters: *mut pg_sys::List,
) -> *mut pg_sys::List {
    let conflict = conflict.map_or(null_mut(), |c| c as *mut bool);

    #[cfg(feature = "pg15")]
    return pg_sys::ExecInsertIndexTuples(rri, slot, estate, false, no_dup_err, conflict, arbiters);

    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    return pg_sys::ExecInsertIndexTuples(
        rri, slot, estate, false, no_dup_err, conflict, arbiters, false,
    );
}

/// `ExecCheckIndexConstraints` for a tuple about to be inserted: false if
/// one of `arbiters` already holds its key (whose TID goes to `conflict_tid`).
///
/// # Safety
/// `rri`'s indexes are open; `slot` holds a complete tuple for `rri`.
pub unsafe fn check_index_constraints(
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState,
    conflict_tid: &mut pg_sys::ItemPointerData,
    arbiters: *mut pg_sys::List,
) -> bool {
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
    return pg_sys::ExecCheckIndexConstraints(rri, slot, estate, conflict_tid, arbiters);

    // No tuple is being updated: nothing to exclude from the check.
    #[cfg(feature = "pg18")]
    return pg_sys::ExecCheckIndexConstraints(
        rri,
        slot,
        estate,
        conflict_tid,
        null_mut(),
        arbiters,
    );
}

/// `index_beginscan` of an index scan with `nkeys` scan keys and no ORDER BY
/// (18 added the instrumentation argument).
///
/// # Safety
/// Both relations are open and locked; `snapshot` outlives the scan.
pub unsafe fn index_beginscan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
) -> pg_sys::IndexScanDesc {
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
    return pg_sys::index_beginscan(heap, index, snapshot, nkeys, 0);

    #[cfg(feature = "pg18")]
    return pg_sys::index_beginscan(heap, index, snapshot, null_mut(), nkeys, 0);
}

/// The attribute at 0-based index `i` of `tupdesc` (C's `TupleDescAttr`).
///
/// # Safety
/// `tupdesc` is valid and `i < tupdesc->natts`.
pub unsafe fn tuple_desc_attr(
    tupdesc: pg_sys::TupleDesc,
    i: usize,
) -> *mut pg_sys::FormData_pg_attribute {
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
    return (*tupdesc).attrs.as_mut_ptr().add(i);

    #[cfg(feature = "pg18")]
    return pg_sys::TupleDescAttr(tupdesc, i as std::ffi::c_int);
}

/// Hands `rri` its planned CHECK constraint expressions (one per
/// `constr->check`, in order), which `ExecConstraints` otherwise builds itself.
///
/// # Safety
/// `states` holds `constr->num_check` expression states, allocated in the
/// executor state's query context.
pub unsafe fn set_check_constraint_exprs(
    rri: *mut pg_sys::ResultRelInfo,
    states: *mut *mut pg_sys::ExprState,
) {
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
    {
        (*rri).ri_ConstraintExprs = states;
    }

    // Renamed in 18, beside the new NOT NULL bookkeeping.
    #[cfg(feature = "pg18")]
    {
        (*rri).ri_CheckConstraintExprs = states;
    }
}

/// The planned CHECK constraint expressions of `rri` (NULL until someone
/// sets or builds them).
///
/// # Safety
/// `rri` is a valid result relation.
pub unsafe fn check_constraint_exprs(
    rri: *mut pg_sys::ResultRelInfo,
) -> *mut *mut pg_sys::ExprState {
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17"))]
    return (*rri).ri_ConstraintExprs;

    #[cfg(feature = "pg18")]
    return (*rri).ri_CheckConstraintExprs;
}

/// Ends what index access methods cache between the index insertions of
/// `rri` (`index_insert_cleanup` on each open index), as `ExecCloseIndices`
/// does. From 17 on, BRIN keeps its range map's buffers pinned between
/// insertions (in `IndexInfo.ii_AmCache`); those pins belong to the resource
/// owner current at the first insertion, so they must be released before that
/// owner ends or changes (a subtransaction begins, commits or rolls back), or
/// the subtransaction's end reports them as leaked and a later release fails
/// with "buffer pin ... is not owned by resource owner". Before 17 nothing is
/// cached and this does nothing. Safe to call any number of times.
///
/// # Safety
/// `rri`'s indexes are open (`ExecOpenIndices`).
pub unsafe fn index_insert_cleanup(rri: *mut pg_sys::ResultRelInfo) {
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    let _ = rri;

    #[cfg(any(feature = "pg17", feature = "pg18"))]
    for i in 0..(*rri).ri_NumIndices.max(0) as usize {
        let index = *(*rri).ri_IndexRelationDescs.add(i);
        let info = *(*rri).ri_IndexRelationInfo.add(i);
        if !index.is_null() && !info.is_null() {
            pg_sys::index_insert_cleanup(index, info);
        }
    }
}

/// Whether a partitioned table's bounds are range bounds.
///
/// # Safety
/// `bounds` is a valid partition bound info.
pub unsafe fn is_range_partitioned(bounds: pg_sys::PartitionBoundInfo) -> bool {
    #[cfg(feature = "pg15")]
    return (*bounds).strategy as u8 == pg_sys::PARTITION_STRATEGY_RANGE;

    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    return (*bounds).strategy == pg_sys::PartitionStrategy::PARTITION_STRATEGY_RANGE;
}

/// This backend's current local transaction id.
///
/// # Safety
/// Called in a backend (MyProc is set before any SQL runs).
pub unsafe fn local_transaction_id() -> pg_sys::LocalTransactionId {
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    return (*pg_sys::MyProc).lxid;

    #[cfg(any(feature = "pg17", feature = "pg18"))]
    return (*pg_sys::MyProc).vxid.lxid;
}
