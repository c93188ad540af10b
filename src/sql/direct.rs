//! The fast path: COPY's techniques applied to validated elements, one heap
//! relation (a partition, or the plain table) at a time.
//!
//! Tuples are built straight from parsed values (no text input functions),
//! buffered, and written with `table_multi_insert` plus index maintenance, as
//! COPY's multi-insert buffers do. Column defaults (the identity, `ingested_at`,
//! any column a DBA added) are the partitioned table's, evaluated as INSERT
//! through it would; NOT NULL and CHECK constraints are evaluated as
//! `ExecConstraints` evaluates them, and a row one of them refuses makes its
//! element rejected (23502, 23514) rather than ending the call. Rows reach a
//! leaf only after the writer routed them by the partition bounds, so they
//! always lie inside the leaf's range.
//!
//! Idempotency: a flush holding rows with an event_id runs in a subtransaction
//! and inserts into the event-key indexes without raising on conflict. If any
//! of its keys already exists (a retry) or is being inserted by a concurrent
//! session, the subtransaction is rolled back and the flush's rows go in one by
//! one through speculative insertion, the exact protocol of INSERT ... ON
//! CONFLICT DO NOTHING (which waits for the other session to finish, unless
//! this call must give way to it: see contention.rs). After a
//! flush that met duplicates, rows with an event_id are probed against the
//! index before they are buffered, since a retried batch is usually duplicates
//! throughout.
//!
//! PostgreSQL keeps only 64 subtransaction ids per backend in shared memory
//! before every other session's visibility checks slow down, so a transaction
//! uses at most `contention::MAX_SUBTRANSACTIONS`. Past that, flushes are unguarded: a row
//! whose event key turns out to be taken is deleted again (in this same
//! transaction, so no one ever sees it) and redone by speculative insertion.
//!
//! The arbiters are every ready unique index on exactly the event key, found by
//! definition: during REINDEX CONCURRENTLY the new copy is one of them, as it
//! is for INSERT ... ON CONFLICT.

use std::ffi::CStr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use std::rc::Rc;

use pgrx::{pg_sys, PgMemoryContexts};

use super::contention::{self, take_subtransaction, Contention, Probe};
use super::datum::{jsonb_datum, supplied_values, Column, EVENT_KEY};
use super::errors::raise_internal;
use super::pg_compat;
use super::sink::{LateRepeat, Repeat, Sink, Stored};
use super::table::{self, LeafLayout, TableShape};
use crate::core::element::{Context, Measurement, ValidElement};
use crate::core::error::{Rejection, RejectionKind};

/// Rows per multi-insert, as COPY's MAX_BUFFERED_TUPLES.
pub const MAX_BUFFERED: usize = 1000;

pub struct DirectLeaf {
    layout: Rc<LeafLayout>,
    /// Keeps the planned defaults alive while this leaf evaluates them.
    _table: Rc<TableShape>,
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    econtext: *mut pg_sys::ExprContext,
    bistate: pg_sys::BulkInsertState,
    cid: pg_sys::CommandId,
    arbiters: *mut pg_sys::List,
    /// The same indexes, by position in the result relation's index arrays.
    arbiter_indexes: Vec<usize>,
    /// Where this call records that it gave way (see contention.rs).
    contention: Contention,
    defaults: Vec<(usize, *mut pg_sys::ExprState)>,
    has_constraints: bool,
    bulk: bool,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    /// The descriptor of `slots`: a copy of the relation's, which, unlike the
    /// relation's own, is not reference-counted (see `slot`).
    slot_descriptor: pg_sys::TupleDesc,
    buffered_events: usize,
    /// The element (ordinal) and measurement each buffered row came from, to
    /// correct its verdict if a race turns the row into a duplicate at flush time.
    buffered_rows: Vec<(usize, usize)>,
    late_repeats: Vec<LateRepeat>,
    /// Holds a stored row while it is compared with a repeat of its event.
    stored_slot: *mut pg_sys::TupleTableSlot,
    /// Probe the event index before buffering (see the module comment).
    probe_first: bool,
    batch_context: PgMemoryContexts,
}

impl DirectLeaf {
    /// Opens one leaf for writing. `bulk` buffers rows for multi-inserts;
    /// otherwise each row is written at once (insert_metric).
    pub fn open(
        relid: pg_sys::Oid,
        table: Rc<TableShape>,
        layout: Rc<LeafLayout>,
        bulk: bool,
        contention: Contention,
    ) -> DirectLeaf {
        // SAFETY: the writer holds ROW EXCLUSIVE on the partitioned table and
        // opens the leaf with the same lock, as COPY does; every executor
        // structure is allocated in the EState's query context and freed with
        // it in `finish`.
        unsafe {
            let (rel, estate, rri) = table::open_for_insert(relid);
            pg_compat::check_valid_insert(rri);
            let mut query_memory = PgMemoryContexts::For((*estate).es_query_cxt);
            let (arbiters, arbiter_indexes) = query_memory.switch_to(|_| {
                let (arbiters, arbiter_indexes) = event_arbiters(rri, &layout);
                if !layout.checks.is_empty()
                    && !(*(*rel).rd_att).constr.is_null()
                    && (*(*(*rel).rd_att).constr).num_check as usize == layout.checks.len()
                {
                    // ExecConstraints would parse and plan each CHECK for every call;
                    // hand it the ones planned once, as ExecRelCheck would build them.
                    let states = pg_sys::palloc(
                        layout.checks.len() * std::mem::size_of::<*mut pg_sys::ExprState>(),
                    ) as *mut *mut pg_sys::ExprState;
                    for (i, check) in layout.checks.iter().enumerate() {
                        *states.add(i) = pg_sys::ExecInitExpr(*check, null_mut());
                    }
                    pg_compat::set_check_constraint_exprs(rri, states);
                }
                (arbiters, arbiter_indexes)
            });
            let defaults = query_memory.switch_to(|_| {
                layout
                    .defaults
                    .iter()
                    .map(|&(attribute, k)| {
                        (
                            attribute,
                            pg_sys::ExecInitExpr(table.defaults[k].1, null_mut()),
                        )
                    })
                    .collect()
            });
            let slot_descriptor =
                query_memory.switch_to(|_| pg_sys::CreateTupleDescCopy((*rel).rd_att));
            let cid = pg_sys::GetCurrentCommandId(true);
            (*estate).es_output_cid = cid;
            DirectLeaf {
                has_constraints: !(*(*rel).rd_att).constr.is_null(),
                econtext: pg_sys::MakePerTupleExprContext(estate),
                bistate: if bulk {
                    pg_sys::GetBulkInsertState()
                } else {
                    null_mut()
                },
                layout,
                _table: table,
                rel,
                estate,
                rri,
                cid,
                arbiters,
                arbiter_indexes,
                contention,
                defaults,
                bulk,
                slots: Vec::new(),
                slot_descriptor,
                buffered_events: 0,
                buffered_rows: Vec::with_capacity(if bulk { MAX_BUFFERED } else { 0 }),
                late_repeats: Vec::new(),
                stored_slot: null_mut(),
                probe_first: false,
                batch_context: PgMemoryContexts::new("metrics_ingest batch"),
            }
        }
    }

    /// Rows waiting for the next flush.
    fn buffered(&self) -> usize {
        self.buffered_rows.len()
    }

    /// Buffer slot `i`, made on first use.
    ///
    /// A slot made by table_slot_create pins the relation's descriptor in the
    /// current resource owner, and a call makes up to MAX_BUFFERED of them:
    /// they overflow the owner's small array, so each pin is moved into its
    /// hash table (whoever remembers a resource when the array is full pays
    /// for the move, often nextval's catalog lookup) and looked up there again
    /// when the tuple table is reset. Seen with perf on PostgreSQL 18 (its
    /// resource owners; COPY pays the same). These slots take a copy of the
    /// descriptor instead, which is not reference-counted. They only ever hold
    /// rows this leaf builds with every attribute set, so they need none of
    /// what the copy leaves out (constraints, defaults, the values of columns
    /// added later).
    fn slot(&mut self, i: usize) -> *mut pg_sys::TupleTableSlot {
        if i == self.slots.len() {
            // SAFETY: the descriptor is a copy of this leaf's relation's, in
            // the EState's query context; the slot is registered in the
            // EState's tuple table, which `finish` resets (dropping the slot's
            // use of the descriptor) before it frees the EState. The callbacks
            // are the relation's own.
            self.slots.push(unsafe {
                pg_sys::ExecAllocTableSlot(
                    &mut (*self.estate).es_tupleTable,
                    self.slot_descriptor,
                    pg_sys::table_slot_callbacks(self.rel),
                )
            });
        }
        self.slots[i]
    }

    /// Fills `slot` with one row: supplied values, then defaults; then checks
    /// NOT NULL and CHECK constraints as INSERT would, returning the first one
    /// the row breaks as its element's rejection.
    unsafe fn fill(
        &mut self,
        slot: *mut pg_sys::TupleTableSlot,
        context: &Context,
        measurement: &Measurement,
        attributes: Option<pg_sys::Datum>,
    ) -> Result<(), Rejection> {
        // SAFETY: the slot belongs to this relation, so its value and null arrays
        // hold `natts` entries; every attribute index comes from its layout.
        unsafe {
            pg_sys::ExecClearTuple(slot);
            let natts = self.layout.natts;
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
            nulls.fill(true);
            let layout = Rc::clone(&self.layout);
            let econtext = self.econtext;
            let defaults = &self.defaults;
            self.batch_context.switch_to(|_| {
                let supplied = supplied_values(context, measurement, attributes);
                for (k, datum) in supplied.into_iter().enumerate() {
                    if let Some(datum) = datum {
                        values[layout.attribute_of[k]] = datum;
                        nulls[layout.attribute_of[k]] = false;
                    }
                }
                for &(i, state) in defaults {
                    let evaluate = (*state)
                        .evalfunc
                        .unwrap_or_else(|| raise_internal("defaults", "no evalfunc"));
                    let is_null = &mut nulls[i];
                    // A default can raise (a sequence at its end): keep the longjmp off Rust frames.
                    values[i] =
                        pg_sys::ffi::pg_guard_ffi_boundary(|| evaluate(state, econtext, is_null));
                }
            });
            pg_sys::ExecStoreVirtualTuple(slot);
            if self.has_constraints {
                let broken = self.broken_constraint(slot);
                reset_if_used((*self.econtext).ecxt_per_tuple_memory);
                if let Some(rejection) = broken {
                    pg_sys::ExecClearTuple(slot);
                    return Err(rejection);
                }
            }
        }
        Ok(())
    }

    /// The first NOT NULL, then CHECK, constraint the row in `slot` breaks, in
    /// ExecConstraints' order and by its rules (a CHECK that is NULL passes),
    /// as a rejection instead of an error: one element a DBA's constraint
    /// refuses must not sink its batch. An error raised while evaluating a
    /// CHECK (a division by zero in it) still ends the call, as in INSERT.
    unsafe fn broken_constraint(&mut self, slot: *mut pg_sys::TupleTableSlot) -> Option<Rejection> {
        // SAFETY: the relation is open and its descriptor has a constraint
        // record (has_constraints); the slot holds a virtual row of it, whose
        // null flags are set for every attribute; the check states, when set,
        // are one per `constr->check`, built in `open`.
        unsafe {
            let descriptor = (*self.rel).rd_att;
            let constraints = (*descriptor).constr;
            // Named only for a rejection: this runs for every row.
            let relation =
                || CStr::from_ptr((*(*self.rel).rd_rel).relname.data.as_ptr()).to_string_lossy();
            if (*constraints).has_not_null {
                for i in 0..self.layout.natts {
                    let attribute = pg_compat::tuple_desc_attr(descriptor, i);
                    if (*attribute).attnotnull
                        && !(*attribute).attisdropped
                        && *(*slot).tts_isnull.add(i)
                    {
                        let column =
                            CStr::from_ptr((*attribute).attname.data.as_ptr()).to_string_lossy();
                        return Some(Rejection::new(
                            RejectionKind::NotNullViolation,
                            column.as_ref(),
                            format!(
                                "is missing, and column \"{column}\" of relation \"{}\" is NOT NULL",
                                relation()
                            ),
                        ));
                    }
                }
            }
            let checks = usize::from((*constraints).num_check);
            if checks == 0 {
                return None;
            }
            let states = pg_compat::check_constraint_exprs(self.rri);
            if states.is_null() {
                // Not planned in `open` (see there): ExecConstraints builds them
                // itself, and raises for a row they refuse.
                pg_sys::ExecConstraints(self.rri, slot, self.estate);
                return None;
            }
            (*self.econtext).ecxt_scantuple = slot;
            for i in 0..checks {
                if !pg_sys::ExecCheck(*states.add(i), self.econtext) {
                    let name =
                        CStr::from_ptr((*(*constraints).check.add(i)).ccname).to_string_lossy();
                    return Some(Rejection::new(
                        RejectionKind::CheckViolation,
                        "element",
                        format!(
                            "new row for relation \"{}\" violates check constraint \"{name}\"",
                            relation()
                        ),
                    ));
                }
            }
            None
        }
    }

    /// Whether the row in `slot` has an event key already stored (or being
    /// stored, in which case this waits for that transaction, as INSERT ... ON
    /// CONFLICT does, unless this call must give way to it: see contention.rs),
    /// and if so whether the stored row has the same values. Once the call
    /// gave way, every row counts as a duplicate: nothing more is written
    /// before the attempt is rolled back.
    unsafe fn repeat_of(&mut self, slot: *mut pg_sys::TupleTableSlot) -> Option<Repeat> {
        if self.gave_way() {
            return Some(Repeat::Duplicate);
        }
        let found = self.found_slot();
        // SAFETY: the slot holds a complete row of this relation; the arbiters
        // are indexes opened by ExecOpenIndices on it, with speculative info.
        unsafe {
            for &index in &self.arbiter_indexes {
                let probe = contention::probe(self.rri, self.estate, index, slot, found);
                reset_if_used((*self.econtext).ecxt_per_tuple_memory);
                match probe {
                    Probe::Free => continue,
                    Probe::Stored(tid) => return Some(self.compare_stored(slot, tid)),
                    Probe::InProgress(xid) => {
                        if !contention::may_wait(&self.contention, xid) {
                            return Some(Repeat::Duplicate);
                        }
                        // Waits for that transaction, then finds what it left.
                        let mut conflict = pg_sys::ItemPointerData::default();
                        let free = pg_compat::check_index_constraints(
                            self.rri,
                            slot,
                            self.estate,
                            &mut conflict,
                            self.arbiters,
                        );
                        reset_if_used((*self.econtext).ecxt_per_tuple_memory);
                        return (!free).then(|| self.compare_stored(slot, conflict));
                    }
                }
            }
            None
        }
    }

    /// Whether this call gave way to another transaction (contention.rs).
    fn gave_way(&self) -> bool {
        contention::gave_way(&self.contention).is_some()
    }

    /// A slot of this relation for stored rows, made on first use.
    fn found_slot(&mut self) -> *mut pg_sys::TupleTableSlot {
        if self.stored_slot.is_null() {
            // SAFETY: made for this relation, in the EState's tuple table.
            self.stored_slot =
                unsafe { pg_sys::table_slot_create(self.rel, &mut (*self.estate).es_tupleTable) };
        }
        self.stored_slot
    }

    /// Compares a row with the stored row of the same event key, at `tid`.
    unsafe fn compare_stored(
        &mut self,
        slot: *mut pg_sys::TupleTableSlot,
        mut tid: pg_sys::ItemPointerData,
    ) -> Repeat {
        let stored = self.found_slot();
        // SAFETY: the TID came from the arbiter index just now; SnapshotAny
        // fetches the version it points to whatever its visibility (the
        // arbiter check already waited for its inserter). Both slots belong to
        // this relation, so attribute indexes from the layout are in range.
        unsafe {
            let found = pg_sys::table_tuple_fetch_row_version(
                self.rel,
                &mut tid,
                &raw mut pg_sys::SnapshotAnyData,
                stored,
            );
            if !found {
                return Repeat::Duplicate;
            }
            refuse_if_invisible(self.rel, stored);
            pg_sys::slot_getallattrs(stored);
            let differs = COMPARED.into_iter().find(|&column| {
                let i = self.layout.attribute_of[column as usize];
                let (a_null, b_null) = (*(*slot).tts_isnull.add(i), *(*stored).tts_isnull.add(i));
                if a_null || b_null {
                    return a_null != b_null;
                }
                let (a, b) = (*(*slot).tts_values.add(i), *(*stored).tts_values.add(i));
                !same_value(column, a, b)
            });
            pg_sys::ExecClearTuple(stored);
            differs.map_or(Repeat::Duplicate, Repeat::Conflict)
        }
    }

    /// Writes the buffered rows. See the module comment for the race handling.
    fn flush(&mut self) {
        if self.buffered() == 0 {
            return;
        }
        if self.gave_way() {
            // The attempt is rolled back: the buffered rows need not be written.
            self.clear_buffer();
            return;
        }
        let guarded = self.buffered_events > 0 && !self.probe_first && take_subtransaction();
        // SAFETY: the subtransaction is begun and ended here on every path (an
        // error rolls it back before going on, as a PL/pgSQL exception block
        // does); the memory context and resource owner are restored after each.
        unsafe {
            let (memory, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
            let restore = || {
                pg_sys::MemoryContextSwitchTo(memory);
                pg_sys::CurrentResourceOwner = owner;
            };
            if guarded {
                // Pins cached by index AMs (17+) belong to the current resource owner.
                pg_compat::index_insert_cleanup(self.rri);
                pg_sys::BeginInternalSubTransaction(null_mut());
                restore();
            }
            let written = catch_unwind(AssertUnwindSafe(|| self.write_buffered(guarded)));
            // A buffer pin taken inside the subtransaction must not outlive it.
            pg_sys::ReleaseBulkInsertStatePin(self.bistate);
            pg_compat::index_insert_cleanup(self.rri);
            let raced = match written {
                Ok(raced) => raced,
                Err(error) => {
                    if guarded {
                        pg_sys::RollbackAndReleaseCurrentSubTransaction();
                        restore();
                    }
                    resume_unwind(error);
                }
            };
            if guarded {
                if raced {
                    pg_sys::RollbackAndReleaseCurrentSubTransaction();
                } else {
                    pg_sys::ReleaseCurrentSubTransaction();
                }
                restore();
            }
            if guarded {
                self.probe_first = raced;
            }
            if raced {
                for i in 0..self.buffered() {
                    if let Some(repeat) = self.insert_one(self.slots[i]) {
                        self.late_repeats.push(late(self.buffered_rows[i], repeat));
                    }
                }
            }
        }
        self.clear_buffer();
    }

    /// Empties the buffer once its rows are written (or need not be).
    fn clear_buffer(&mut self) {
        // SAFETY: the slots hold rows built in the batch context, used no more.
        unsafe {
            for &slot in &self.slots[..self.buffered()] {
                pg_sys::ExecClearTuple(slot);
            }
            pg_sys::MemoryContextReset(self.batch_context.value());
        }
        self.buffered_events = 0;
        self.buffered_rows.clear();
    }

    /// The multi-insert and its index entries; true if an event key conflicted
    /// in a `guarded` flush (the caller then rolls the flush back and redoes
    /// it). In an unguarded flush each conflicting row is taken back out and
    /// redone here.
    unsafe fn write_buffered(&mut self, guarded: bool) -> bool {
        self.sort_buffer();
        // SAFETY: the first `buffered()` slots hold complete rows of this relation.
        unsafe {
            pg_sys::table_multi_insert(
                self.rel,
                self.slots.as_mut_ptr(),
                self.buffered() as i32,
                self.cid,
                0,
                self.bistate,
            );
            let check_keys = self.buffered_events > 0;
            let arbiters = if check_keys {
                self.arbiters
            } else {
                null_mut()
            };
            let mut raced = false;
            for i in 0..self.buffered() {
                let slot = self.slots[i];
                let mut conflict = false;
                let recheck = pg_compat::insert_index_tuples(
                    self.rri,
                    slot,
                    self.estate,
                    check_keys,
                    Some(&mut conflict),
                    arbiters,
                );
                free_list(recheck);
                reset_if_used((*self.econtext).ecxt_per_tuple_memory);
                if conflict && !guarded {
                    // Probed free, then taken by another session before this flush:
                    // take this row back out, and let speculative insertion settle it.
                    pg_sys::CommandCounterIncrement();
                    pg_sys::simple_table_tuple_delete(
                        self.rel,
                        &mut (*slot).tts_tid,
                        pg_sys::GetActiveSnapshot(),
                    );
                    if let Some(repeat) = self.insert_one(slot) {
                        self.late_repeats.push(late(self.buffered_rows[i], repeat));
                    }
                    self.probe_first = true;
                    continue;
                }
                raced |= conflict;
            }
            raced
        }
    }

    /// Orders the buffered rows by (user_id, "timestamp"), the leading columns
    /// of both keys, so that their index entries go in in key order, a leaf
    /// page after the next, instead of all over the indexes. The sort is
    /// stable: rows of one event keep the order of their elements. Ids were
    /// assigned when the rows were built, in element order; only where the
    /// rows lie in the heap changes.
    fn sort_buffer(&mut self) {
        let n = self.buffered();
        let user = self.layout.attribute_of[Column::UserId as usize];
        let time = self.layout.attribute_of[Column::Timestamp as usize];
        // SAFETY: the first `n` slots hold complete virtual rows of this
        // relation, whose user_id (text) and "timestamp" (int8 by value) are
        // NOT NULL; the text values live in the batch context until the flush ends.
        let mut order: Vec<(&[u8], i64, usize)> = unsafe {
            (0..n)
                .map(|i| {
                    let slot = self.slots[i];
                    let value = |a: usize| *(*slot).tts_values.add(a);
                    let user_id = pgrx::varlena::varlena_to_byte_slice(
                        value(user).cast_mut_ptr::<pg_sys::varlena>(),
                    );
                    (user_id, value(time).value() as i64, i)
                })
                .collect()
        };
        order.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let slots: Vec<_> = order.iter().map(|&(_, _, i)| self.slots[i]).collect();
        let rows: Vec<_> = order
            .iter()
            .map(|&(_, _, i)| self.buffered_rows[i])
            .collect();
        self.slots[..n].copy_from_slice(&slots);
        self.buffered_rows.copy_from_slice(&rows);
    }

    /// One row through speculative insertion: None if stored, else what it repeats.
    unsafe fn insert_one(&mut self, slot: *mut pg_sys::TupleTableSlot) -> Option<Repeat> {
        // SAFETY: the slot holds a complete row of this relation; the speculative
        // insertion lock is taken and released around the insertion, and the
        // tuple is completed (kept or super-deleted) before the lock goes, as
        // ExecInsert does.
        unsafe {
            let has_event = !*(*slot)
                .tts_isnull
                .add(self.layout.attribute_of[Column::EventId as usize]);
            if !has_event {
                pg_sys::table_tuple_insert(self.rel, slot, self.cid, 0, null_mut());
                let recheck = pg_compat::insert_index_tuples(
                    self.rri,
                    slot,
                    self.estate,
                    false,
                    None,
                    null_mut(),
                );
                free_list(recheck);
                reset_if_used((*self.econtext).ecxt_per_tuple_memory);
                return None;
            }
            loop {
                if let Some(repeat) = self.repeat_of(slot) {
                    return Some(repeat);
                }
                let xid = pg_sys::GetCurrentTransactionId();
                let token = pg_sys::SpeculativeInsertionLockAcquire(xid);
                pg_sys::table_tuple_insert_speculative(
                    self.rel,
                    slot,
                    self.cid,
                    0,
                    null_mut(),
                    token,
                );
                let mut conflict = false;
                let recheck = pg_compat::insert_index_tuples(
                    self.rri,
                    slot,
                    self.estate,
                    true,
                    Some(&mut conflict),
                    self.arbiters,
                );
                pg_sys::table_tuple_complete_speculative(self.rel, slot, token, !conflict);
                pg_sys::SpeculativeInsertionLockRelease(xid);
                free_list(recheck);
                reset_if_used((*self.econtext).ecxt_per_tuple_memory);
                if !conflict {
                    return None;
                }
            }
        }
    }

    /// One row, written at once (insert_metric): None if stored, else what it
    /// repeats; or what refused it.
    fn insert_now(
        &mut self,
        context: &Context,
        measurement: &Measurement,
        attributes: Option<pg_sys::Datum>,
    ) -> Result<Option<Repeat>, Rejection> {
        let slot = self.slot(0);
        // SAFETY: slot 0 belongs to this relation; it is cleared and the batch
        // memory reset once the row is written (or refused).
        unsafe {
            let filled = self.fill(slot, context, measurement, attributes);
            let repeat = filled.map(|()| self.insert_one(slot));
            pg_sys::ExecClearTuple(slot);
            pg_sys::MemoryContextReset(self.batch_context.value());
            repeat
        }
    }
}

impl Sink for DirectLeaf {
    fn put(&mut self, ordinal: usize, element: &ValidElement) -> Result<Stored, Rejection> {
        // No flush may happen in the middle of an element: a flush frees the
        // values built for it. (The same event twice in one buffer needs nothing
        // here: the flush meets the conflict and redoes its rows.)
        if self.bulk && self.buffered() + element.measurements.len() > MAX_BUFFERED {
            self.flush();
        }
        let attributes = element.context.attributes.as_deref().map(|json| {
            // jsonb_in leaves a few kB of parser state behind per call: it runs in
            // the per-tuple memory, reset at once as COPY resets its per-row
            // context, and only the jsonb value is copied into the batch context,
            // so the batch's memory stays small and in cache.
            // SAFETY: the per-tuple context holds nothing else between rows; the
            // batch context lives until the rows built from it are written;
            // jsonb_in returns a varlena, which pg_detoast_datum_copy copies into
            // the current context.
            unsafe {
                let scratch = (*self.econtext).ecxt_per_tuple_memory;
                let parsed = PgMemoryContexts::For(scratch).switch_to(|_| jsonb_datum(json));
                let kept = self.batch_context.switch_to(|_| {
                    pg_sys::pg_detoast_datum_copy(parsed.cast_mut_ptr::<pg_sys::varlena>())
                });
                pg_sys::MemoryContextReset(scratch);
                pg_sys::Datum::from(kept)
            }
        });
        let mut stored = Stored::default();
        let has_event = element.context.event_id.is_some();
        let first = self.buffered();
        for (measurement, values) in element.measurements.iter().enumerate() {
            if !self.bulk {
                match self.insert_now(&element.context, values, attributes)? {
                    None => stored.inserted += 1,
                    Some(repeat) => stored.repeat(measurement, repeat),
                }
                continue;
            }
            let slot = self.slot(self.buffered());
            // SAFETY: the slot is the next free one of this relation's buffer.
            unsafe {
                if let Err(rejection) = self.fill(slot, &element.context, values, attributes) {
                    // None of the element is stored: its rows buffered so far go.
                    for &slot in &self.slots[first..self.buffered()] {
                        pg_sys::ExecClearTuple(slot);
                    }
                    if has_event {
                        self.buffered_events -= self.buffered() - first;
                    }
                    self.buffered_rows.truncate(first);
                    return Err(rejection);
                }
                if has_event && self.probe_first {
                    if let Some(repeat) = self.repeat_of(slot) {
                        pg_sys::ExecClearTuple(slot);
                        stored.repeat(measurement, repeat);
                        continue;
                    }
                }
            }
            if has_event {
                self.buffered_events += 1;
            }
            self.buffered_rows.push((ordinal, measurement));
            stored.inserted += 1;
        }
        Ok(stored)
    }

    fn finish(mut self: Box<Self>) -> Vec<LateRepeat> {
        self.flush();
        // SAFETY: everything opened in `open` is released once, in reverse order;
        // the relation stays locked until the transaction ends (NoLock).
        unsafe {
            if !self.bistate.is_null() {
                pg_sys::FreeBulkInsertState(self.bistate);
                pg_sys::table_finish_bulk_insert(self.rel, 0);
            }
            table::close_for_insert(self.rel, self.estate, self.rri);
        }
        std::mem::take(&mut self.late_repeats)
    }
}

/// Resets a per-row context unless nothing was allocated in it since its last
/// reset and it has no child (the common case: most rows allocate nothing in
/// it): every call into PostgreSQL passes a guarded FFI boundary (a sigsetjmp),
/// and this one runs several times per row.
///
/// # Safety
/// `context` is a valid memory context whose allocations nobody still uses.
unsafe fn reset_if_used(context: pg_sys::MemoryContext) {
    // SAFETY: these are the two fields MemoryContextReset itself tests before
    // doing anything: `isReset` is false once anything was allocated since the
    // last reset, and child contexts are deleted by every reset.
    unsafe {
        if !(*context).isReset || !(*context).firstchild.is_null() {
            pg_sys::MemoryContextReset(context);
        }
    }
}

/// `list_free`, skipped for the empty list (NIL), which is what
/// ExecInsertIndexTuples returns unless an index needs a recheck.
///
/// # Safety
/// `list` is NIL or a list owned by the caller.
unsafe fn free_list(list: *mut pg_sys::List) {
    if !list.is_null() {
        // SAFETY: a non-NIL list the caller owns, freed once here.
        unsafe { pg_sys::list_free(list) };
    }
}

fn late((ordinal, measurement): (usize, usize), repeat: Repeat) -> LateRepeat {
    LateRepeat {
        ordinal,
        measurement,
        repeat,
    }
}

/// Under REPEATABLE READ or SERIALIZABLE, a stored event this transaction's
/// snapshot cannot see (committed by another transaction after it began) is
/// a serialization failure (40001), exactly as for INSERT ... ON CONFLICT DO
/// NOTHING: the client retries the transaction, which then sees the event and
/// reports it `duplicate`.
unsafe fn refuse_if_invisible(rel: pg_sys::Relation, stored: *mut pg_sys::TupleTableSlot) {
    // SAFETY: `stored` holds a row of `rel` fetched just now; the active
    // snapshot is the statement's (pushed by the executor around this call).
    unsafe {
        if pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32 {
            return;
        }
        if pg_sys::table_tuple_satisfies_snapshot(rel, stored, pg_sys::GetActiveSnapshot()) {
            return;
        }
        let tuple = pg_sys::ExecFetchSlotHeapTuple(stored, false, null_mut());
        let xmin = (*(*tuple).t_data).t_choice.t_heap.t_xmin;
        if !pg_sys::TransactionIdIsCurrentTransactionId(xmin) {
            super::errors::raise(
                pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "could not serialize access due to concurrent insert of the same event".into(),
            );
        }
    }
}

/// The supplied columns outside the event key: a repeat of an event is a
/// duplicate when all of them are equal to the stored row's.
const COMPARED: [Column; 8] = [
    Column::MetricValue,
    Column::MetricLabel,
    Column::SessionId,
    Column::DeviceId,
    Column::AppVersion,
    Column::Location,
    Column::SentimentScore,
    Column::Attributes,
];

/// Whether two values of a column are the same: numbers as float8's = does,
/// text and jsonb by their bytes (jsonb's binary form is canonical: keys
/// sorted, duplicates gone), once detoasted.
unsafe fn same_value(column: Column, a: pg_sys::Datum, b: pg_sys::Datum) -> bool {
    if column.type_oid() == pg_sys::FLOAT8OID {
        return f64::from_bits(a.value() as u64) == f64::from_bits(b.value() as u64);
    }
    // SAFETY: both datums are non-null varlenas of the column's type (the
    // caller checked the nulls); detoasting copies them if they are compressed
    // or out of line, and the byte slices live as long as those copies.
    unsafe {
        let bytes = |datum: pg_sys::Datum| {
            let value = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            std::slice::from_raw_parts(
                pgrx::varlena::vardata_any(value).cast::<u8>(),
                pgrx::varlena::varsize_any_exhdr(value),
            )
        };
        bytes(a) == bytes(b)
    }
}

/// Every ready, immediate unique index of the leaf whose key is exactly the
/// event key, in order (see the module comment): as a list of OIDs, and as
/// positions in the result relation's index arrays.
unsafe fn event_arbiters(
    rri: *mut pg_sys::ResultRelInfo,
    layout: &LeafLayout,
) -> (*mut pg_sys::List, Vec<usize>) {
    // SAFETY: ExecOpenIndices filled ri_NumIndices index relations and infos.
    unsafe {
        let mut arbiters = null_mut();
        let mut positions = Vec::new();
        for i in 0..(*rri).ri_NumIndices as usize {
            let index = *(*rri).ri_IndexRelationDescs.add(i);
            let info = *(*rri).ri_IndexRelationInfo.add(i);
            let keys = (*info).ii_NumIndexKeyAttrs as usize;
            let is_event_key = table::is_immediate_unique(rri, i)
                && (*info).ii_Expressions.is_null()
                && keys == EVENT_KEY.len()
                && EVENT_KEY.iter().enumerate().all(|(k, column)| {
                    (*info).ii_IndexAttrNumbers[k] as usize
                        == layout.attribute_of[*column as usize] + 1
                });
            if is_event_key {
                arbiters = pg_sys::lappend_oid(arbiters, (*index).rd_id);
                positions.push(i);
            }
        }
        (arbiters, positions)
    }
}
