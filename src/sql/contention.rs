//! Concurrent calls that store the same events never deadlock.
//!
//! A call waits for another transaction when that transaction is inserting an
//! event key (or a dead letter) this call also carries: PostgreSQL can only
//! tell whether the row is a duplicate once the other commits or aborts. Two
//! calls carrying the same events in different orders would each wait for a
//! key the other inserted first: a deadlock, which PostgreSQL breaks by
//! failing one of them (40P01).
//!
//! ingest_json runs each attempt in a subtransaction and follows "wait-die",
//! ordering transactions by age (their top-level transaction ids):
//! - an older call waits for a younger one, as INSERT ... ON CONFLICT would;
//! - a younger call never waits while it holds rows: it rolls its attempt back
//!   (releasing every row it wrote), waits for the older transaction to end
//!   while holding nothing of this call, and starts again from the payload.
//!
//! A call only ever waits holding rows for a younger transaction, so no cycle of
//! waits can form; a restarted call keeps its age, so it is eventually the
//! oldest and stops restarting. The same holds for the lock that serializes
//! the making of partitions: a call that cannot take it at once starts again
//! after it. What comes after the rows (users, taken in user_id order; the
//! rollups' delta rows, which conflict with nothing) cannot close a cycle.
//!
//! Not covered: rows this transaction wrote before the call (a client's own
//! earlier statements), rows written through the INSERT path (partitions with
//! triggers, Citus), and insert_metric, which writes one event and waits as
//! INSERT does.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

use pgrx::{pg_sys, PgMemoryContexts};

use super::errors::raise_internal;
use super::pg_compat;

/// Subtransactions one transaction may use for optimistic flushes and
/// restartable attempts, well under PostgreSQL's per-backend cache of 64
/// (PGPROC_MAX_CACHED_SUBXIDS), past which every session's visibility checks
/// slow down.
pub const MAX_SUBTRANSACTIONS: u32 = 32;

thread_local! {
    /// (start of the transaction they were counted in, subtransactions used).
    static SUBTRANSACTIONS: Cell<(i64, u32)> = const { Cell::new((0, 0)) };
}

/// Takes one subtransaction from this transaction's budget, if any is left.
/// The budget counts subtransactions whose ids stay cached until the
/// transaction ends: a rolled-back attempt gives its own back.
pub fn take_subtransaction() -> bool {
    let used = subtransactions_used();
    if used >= MAX_SUBTRANSACTIONS {
        return false;
    }
    give_back_subtransactions(used + 1);
    true
}

/// Subtransactions taken so far in this transaction.
fn subtransactions_used() -> u32 {
    // SAFETY: reads the current transaction's start time, always set inside one.
    let transaction = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    match SUBTRANSACTIONS.get() {
        (counted_in, used) if counted_in == transaction => used,
        _ => 0,
    }
}

/// Returns the subtransactions taken since `used` was read: a rolled-back
/// subtransaction leaves PostgreSQL's cache with everything it began.
fn give_back_subtransactions(used: u32) {
    // SAFETY: as in subtransactions_used.
    let transaction = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    SUBTRANSACTIONS.set((transaction, used));
}

/// What a restartable attempt gave way to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// An older transaction inserting a key this attempt also carries.
    Transaction(pg_sys::TransactionId),
    /// Another transaction making a partition, holding the lock on this table.
    PartitionLock(pg_sys::Oid),
}

/// Where a restartable attempt records what it gave way to; None for a call
/// that cannot restart (it waits as INSERT does).
pub type Contention = Option<std::rc::Rc<Cell<Option<Blocker>>>>;

/// What the attempt gave way to, if it did: it writes nothing more, and is
/// rolled back and made again.
pub fn gave_way(contention: &Contention) -> Option<Blocker> {
    contention.as_ref().and_then(|blocked| blocked.get())
}

/// Whether a call may wait for `xid`, which is inserting (or deleting) a row
/// with a key the call carries. False only for a restartable call holding rows
/// of its own, younger than `xid`'s transaction: that call must give way.
pub fn may_wait(contention: &Contention, xid: pg_sys::TransactionId) -> bool {
    let Some(blocked) = contention else {
        return true;
    };
    // SAFETY: plain reads of transaction state; `xid` is in progress, so it is
    // newer than TransactionXmin and pg_subtrans holds its parent.
    let older = unsafe {
        let ours = pg_sys::GetTopTransactionIdIfAny();
        if ours == pg_sys::InvalidTransactionId {
            // Nothing written yet: holding nothing, waiting closes no cycle.
            return true;
        }
        let theirs = pg_sys::SubTransGetTopmostTransaction(xid);
        pg_sys::TransactionIdPrecedes(ours, theirs)
    };
    if !older {
        blocked.set(Some(Blocker::Transaction(xid)));
    }
    older
}

/// Takes the partition-making lock on `metrics` (`relid`) for a restartable
/// call if it is free at once; otherwise records the contention and returns
/// false. A call that cannot restart takes it in partition_for, waiting.
pub fn try_partition_lock(contention: &Contention, metrics: pg_sys::Oid) -> bool {
    let Some(blocked) = contention else {
        return true;
    };
    // SAFETY: a relation lock taken by OID; if granted it is held until the
    // transaction (or this attempt's subtransaction) ends, and partition_for's
    // LOCK TABLE takes it again at no cost.
    let taken = unsafe { pg_sys::ConditionalLockRelationOid(metrics, PARTITION_LOCK_MODE) };
    if !taken {
        blocked.set(Some(Blocker::PartitionLock(metrics)));
    }
    taken
}

/// The lock `metrics_ingest.partition_for` takes to make partitions one at a
/// time: SHARE UPDATE EXCLUSIVE on metrics_ingest.metrics, the lock ATTACH
/// PARTITION takes anyway (since 0.3.2).
const PARTITION_LOCK_MODE: pg_sys::LOCKMODE = pg_sys::ShareUpdateExclusiveLock as pg_sys::LOCKMODE;

/// Runs `attempt` until it completes. With a subtransaction to spare, each
/// attempt runs in one and is told it may give way (`Contention` is Some):
/// when it returns `Err`, everything it wrote is rolled back, this waits for
/// the blocker while holding nothing of the call, and the next attempt starts.
/// Without one (the transaction's budget is spent), the single attempt waits
/// as INSERT does and cannot give way.
pub fn restarting<T>(mut attempt: impl FnMut(&Contention) -> Result<T, Blocker>) -> T {
    let mut deadlocks = 0;
    loop {
        let before = subtransactions_used();
        if !take_subtransaction() {
            return attempt(&None).unwrap_or_else(|blocker| {
                raise_internal(
                    "storing",
                    format!("gave way to {blocker:?} without a subtransaction"),
                )
            });
        }
        let contention: Contention = Some(Default::default());
        // SAFETY: the subtransaction is begun and ended here on every path (an
        // error rolls it back before going on, as a PL/pgSQL exception block
        // does). Inside it the attempt runs in the caller's memory context but
        // under the subtransaction's resource owner, so that a rollback releases
        // what the attempt holds (buffer pins, relations) before it drops a
        // partition the attempt made; both are restored when it ends.
        let blocker = unsafe {
            let (memory, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
            let restore = || {
                pg_sys::MemoryContextSwitchTo(memory);
                pg_sys::CurrentResourceOwner = owner;
            };
            pg_sys::BeginInternalSubTransaction(null_mut());
            pg_sys::MemoryContextSwitchTo(memory);
            match catch_unwind(AssertUnwindSafe(|| attempt(&contention))) {
                Ok(Ok(done)) => {
                    pg_sys::ReleaseCurrentSubTransaction();
                    restore();
                    return done;
                }
                Ok(Err(blocker)) => {
                    pg_sys::RollbackAndReleaseCurrentSubTransaction();
                    restore();
                    give_back_subtransactions(before);
                    blocker
                }
                Err(error) => {
                    pg_sys::RollbackAndReleaseCurrentSubTransaction();
                    restore();
                    // A wait this protocol could not see coming (a key taken in
                    // the instant between looking it up and inserting it) closed a
                    // cycle, and PostgreSQL chose this attempt to break it: the
                    // rollback released what it held, so the next attempt can go on.
                    // A cycle through rows this transaction wrote before the call
                    // would close again: after MAX_DEADLOCK_RETRIES the error stands.
                    if !is_deadlock(&*error) || deadlocks == MAX_DEADLOCK_RETRIES {
                        resume_unwind(error);
                    }
                    deadlocks += 1;
                    give_back_subtransactions(before);
                    continue;
                }
            }
        };
        // SAFETY: this call holds no row and no lock of its own now; waiting for
        // a transaction id or a lock is interruptible (statement_timeout, cancel).
        unsafe {
            match blocker {
                Blocker::Transaction(xid) => pg_sys::XactLockTableWait(
                    xid,
                    null_mut(),
                    null_mut(),
                    pg_sys::XLTW_Oper::XLTW_None,
                ),
                Blocker::PartitionLock(metrics) => {
                    // Kept until the transaction ends, as partition_for would keep it.
                    pg_sys::LockRelationOid(metrics, PARTITION_LOCK_MODE);
                }
            }
            pg_sys::check_for_interrupts!();
        }
    }
}

/// Attempts made again after PostgreSQL broke a deadlock by failing one.
const MAX_DEADLOCK_RETRIES: u32 = 3;

/// Whether a caught error is PostgreSQL's deadlock error (40P01).
fn is_deadlock(error: &(dyn std::any::Any + Send)) -> bool {
    matches!(
        error.downcast_ref::<pg_sys::panic::CaughtError>(),
        Some(pg_sys::panic::CaughtError::PostgresError(report))
            if report.sql_error_code() == pgrx::PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
    )
}

/// Whether a unique index already holds a key, looked up without waiting.
pub enum Probe {
    /// No live or in-progress row has the key.
    Free,
    /// A row visible to this transaction (committed, or its own) has it, at this TID.
    Stored(pg_sys::ItemPointerData),
    /// Another transaction is inserting or deleting a row with the key.
    InProgress(pg_sys::TransactionId),
}

/// Looks `slot`'s key up in `index` (a unique index of `rri`, whose info was
/// built for speculative insertion) under a dirty snapshot, as
/// ExecCheckIndexConstraints does, but reports an in-progress row instead of
/// waiting for it. `found` is a slot of the relation, cleared afterwards.
/// What the look-up allocates is in the executor state's per-tuple memory,
/// which the caller resets.
///
/// # Safety
/// `rri`'s indexes are open with speculative info (ExecOpenIndices(.., true));
/// `index` < ri_NumIndices; `slot` holds a complete row of `rri`'s relation;
/// `estate` is the executor state whose per-tuple context may be used.
pub unsafe fn probe(
    rri: *mut pg_sys::ResultRelInfo,
    estate: *mut pg_sys::EState,
    index: usize,
    slot: *mut pg_sys::TupleTableSlot,
    found: *mut pg_sys::TupleTableSlot,
) -> Probe {
    // SAFETY: see the function's contract (FormIndexDatum evaluates index
    // expressions in this context, with the slot as its scan tuple).
    unsafe {
        let econtext = pg_sys::MakePerTupleExprContext(estate);
        (*econtext).ecxt_scantuple = slot;
        // The scan keys and values live on this stack frame for the whole scan,
        // which ends before the closure returns.
        PgMemoryContexts::For((*econtext).ecxt_per_tuple_memory).switch_to(|_| {
            let relation = *(*rri).ri_IndexRelationDescs.add(index);
            let info = *(*rri).ri_IndexRelationInfo.add(index);
            let nkeys = (*info).ii_NumIndexKeyAttrs as usize;
            let mut values = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
            let mut isnull = [false; pg_sys::INDEX_MAX_KEYS as usize];
            pg_sys::FormIndexDatum(info, slot, estate, values.as_mut_ptr(), isnull.as_mut_ptr());
            if isnull[..nkeys].iter().any(|&n| n) && !(*info).ii_NullsNotDistinct {
                // NULLs never conflict in a unique index.
                return Probe::Free;
            }
            let mut keys: [pg_sys::ScanKeyData; pg_sys::INDEX_MAX_KEYS as usize] =
                std::mem::zeroed();
            for k in 0..nkeys {
                let flags = if isnull[k] {
                    (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32
                } else {
                    0
                };
                pg_sys::ScanKeyEntryInitialize(
                    &mut keys[k],
                    flags,
                    (k + 1) as pg_sys::AttrNumber,
                    *(*info).ii_UniqueStrats.add(k),
                    pg_sys::InvalidOid,
                    *(*relation).rd_indcollation.add(k),
                    *(*info).ii_UniqueProcs.add(k),
                    values[k],
                );
            }
            // InitDirtySnapshot: the visibility check fills in xmin / xmax when the
            // version it returns is being inserted / deleted by a transaction in progress.
            let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
            dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
            let scan = pg_compat::index_beginscan(
                (*rri).ri_RelationDesc,
                relation,
                &mut dirty,
                nkeys as i32,
            );
            pg_sys::index_rescan(scan, keys.as_mut_ptr(), nkeys as i32, null_mut(), 0);
            let result = if !pg_sys::index_getnext_slot(
                scan,
                pg_sys::ScanDirection::ForwardScanDirection,
                found,
            ) {
                Probe::Free
            } else if dirty.xmin != pg_sys::InvalidTransactionId {
                Probe::InProgress(dirty.xmin)
            } else if dirty.xmax != pg_sys::InvalidTransactionId {
                Probe::InProgress(dirty.xmax)
            } else {
                Probe::Stored((*found).tts_tid)
            };
            pg_sys::index_endscan(scan);
            pg_sys::ExecClearTuple(found);
            result
        })
    }
}
