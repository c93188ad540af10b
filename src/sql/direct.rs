//! The fast path: COPY's techniques applied to validated elements.
//!
//! Tuples are built straight from parsed values (no text input functions),
//! buffered, and written with `table_multi_insert` plus index maintenance,
//! the way COPY's multi-insert buffer does. Column defaults (the identity,
//! `ingested_at`, any column a DBA added) are evaluated as COPY evaluates them,
//! and NOT NULL / CHECK constraints are enforced with `ExecConstraints`.
//!
//! Idempotency: a flush holding rows with an event_id runs in a subtransaction
//! and inserts into the event index without raising on conflict. If any of its
//! keys already exists (a retry) or is being inserted by a concurrent session,
//! the subtransaction is rolled back and the flush's rows go in one by one
//! through PostgreSQL's speculative insertion, the exact protocol of INSERT ...
//! ON CONFLICT DO NOTHING (which waits for the other session to finish). New
//! events thus cost no extra index probe; after a flush that met duplicates,
//! rows are checked against the index as they are buffered, since a retried
//! batch is usually duplicates throughout. Nothing is lost or doubled.
//!
//! Used only where it is equivalent to an INSERT: a plain heap table with no
//! triggers, no row-level security and no generated columns. Otherwise the
//! writer falls back to SPI.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use std::rc::Rc;

use pgrx::{pg_guard, pg_sys};

use super::errors::raise_internal;
use super::pg_compat;
use crate::core::element::{Context, Measurement};

/// Rows per multi-insert, as COPY's MAX_BUFFERED_TUPLES.
const MAX_BUFFERED: usize = 1000;

/// The columns we supply, in the order of `supplied_values`, with their types.
const SUPPLIED: [(&str, pg_sys::Oid); 12] = [
    ("timestamp", pg_sys::TIMESTAMPTZOID),
    ("user_id", pg_sys::TEXTOID),
    ("session_id", pg_sys::TEXTOID),
    ("metric_type", pg_sys::TEXTOID),
    ("metric_value", pg_sys::FLOAT8OID),
    ("metric_label", pg_sys::TEXTOID),
    ("device_id", pg_sys::TEXTOID),
    ("app_version", pg_sys::TEXTOID),
    ("location", pg_sys::TEXTOID),
    ("sentiment_score", pg_sys::FLOAT8OID),
    ("event_id", pg_sys::TEXTOID),
    ("attributes", pg_sys::JSONBOID),
];
const EVENT_ID: usize = 10;
const EVENT_INDEX: &CStr = c"metrics_event_key";

pub struct DirectTable {
    locked: pg_sys::Relation,
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    econtext: *mut pg_sys::ExprContext,
    bistate: pg_sys::BulkInsertState,
    cid: pg_sys::CommandId,
    arbiters: *mut pg_sys::List,
    natts: usize,
    /// Attribute index (0-based) of each SUPPLIED column.
    attribute_of: [usize; 12],
    defaults: Vec<(usize, *mut pg_sys::ExprState)>,
    has_constraints: bool,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    buffered_events: usize,
    /// The element each buffered row came from, to correct its verdict if a
    /// race turns the row into a duplicate at flush time.
    buffered_ordinals: Vec<usize>,
    late_duplicates: Vec<usize>,
    /// The last flush met existing keys: probe the index before buffering.
    expect_duplicates: bool,
    batch_context: pg_sys::MemoryContext,
}

pub enum Buffered {
    Inserted,
    Duplicate,
}

/// What the direct path needs to know about metrics_ingest.metrics, worked
/// out and planned once per backend rather than once per call: which columns
/// we supply, the planned default and CHECK expressions, the event index.
/// Any relcache invalidation of the table marks it stale; it is rebuilt by the
/// next call once that call holds the table's lock.
struct Shape {
    relid: pg_sys::Oid,
    /// None when the table is not eligible (triggers, RLS, partitioning...).
    layout: Option<Layout>,
    /// Holds the planned expressions.
    context: pg_sys::MemoryContext,
}

struct Layout {
    natts: usize,
    /// Attribute index (0-based) of each SUPPLIED column.
    attribute_of: [usize; 12],
    defaults: Vec<(usize, *mut pg_sys::Expr)>,
    /// Planned CHECK constraints, in the order of the relation's `constr->check`.
    checks: Vec<*mut pg_sys::Expr>,
    event_index: pg_sys::Oid,
}

impl Drop for Shape {
    fn drop(&mut self) {
        unsafe { pg_sys::MemoryContextDelete(self.context) };
    }
}

thread_local! {
    // An Rc: a call keeps the shape it started with even if a newer one replaces it.
    static SHAPE: RefCell<Option<Rc<Shape>>> = const { RefCell::new(None) };
    static SHAPE_STALE: Cell<bool> = const { Cell::new(false) };
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_relcache_invalidation(
    _arg: pg_sys::Datum,
    relid: pg_sys::Oid,
) {
    // Only mark: a call in progress may still be using the planned expressions.
    let ours = SHAPE.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|shape| shape.relid == relid)
    });
    if relid == pg_sys::InvalidOid || ours {
        SHAPE_STALE.set(true);
    }
}

/// The table's oid: the cached one while it is known to be current.
unsafe fn metrics_relid() -> pg_sys::Oid {
    if !SHAPE_STALE.get() {
        if let Some(relid) = SHAPE.with(|s| s.borrow().as_ref().map(|shape| shape.relid)) {
            return relid;
        }
    }
    let namespace = pg_sys::get_namespace_oid(c"metrics_ingest".as_ptr(), false);
    let relid = pg_sys::get_relname_relid(c"metrics".as_ptr(), namespace);
    if relid == pg_sys::InvalidOid {
        raise_internal("opening metrics", "metrics_ingest.metrics does not exist");
    }
    relid
}

/// The shape of `rel`, whose lock the caller holds: any change to the table
/// has been seen by now, so a stale or missing shape is rebuilt here.
unsafe fn current_shape(rel: pg_sys::Relation) -> Rc<Shape> {
    let relid = (*rel).rd_id;
    let cached = SHAPE.with(|s| s.borrow().clone());
    if let Some(shape) = cached.filter(|shape| !SHAPE_STALE.get() && shape.relid == relid) {
        return shape;
    }
    let context = pg_sys::AllocSetContextCreateExtended(
        pg_sys::TopMemoryContext,
        c"metrics_ingest table shape".as_ptr(),
        pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
        pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
        pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
    );
    let old = pg_sys::MemoryContextSwitchTo(context);
    let layout = plan_layout(rel);
    pg_sys::MemoryContextSwitchTo(old);
    let shape = Rc::new(Shape {
        relid,
        layout,
        context,
    });
    SHAPE.with(|s| *s.borrow_mut() = Some(Rc::clone(&shape)));
    SHAPE_STALE.set(false);
    shape
}

/// Plans everything a call needs, in the current memory context.
unsafe fn plan_layout(rel: pg_sys::Relation) -> Option<Layout> {
    let form = (*rel).rd_rel;
    let eligible = (*form).relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
        && (*rel).trigdesc.is_null()
        && !(*form).relrowsecurity;
    if !eligible {
        return None;
    }
    let tupdesc = (*rel).rd_att;
    let natts = (*tupdesc).natts as usize;
    let mut layout = Layout {
        natts,
        attribute_of: [usize::MAX; 12],
        defaults: Vec::new(),
        checks: Vec::new(),
        event_index: pg_sys::InvalidOid,
    };
    for i in 0..natts {
        let attribute = pg_compat::tuple_desc_attr(tupdesc, i);
        if (*attribute).attisdropped {
            continue;
        }
        if (*attribute).attgenerated != 0 {
            return None;
        }
        let name = CStr::from_ptr((*attribute).attname.data.as_ptr());
        match SUPPLIED
            .iter()
            .position(|(n, _)| n.as_bytes() == name.to_bytes())
        {
            Some(k) if SUPPLIED[k].1 == (*attribute).atttypid => layout.attribute_of[k] = i,
            Some(_) => return None,
            None => {
                let default = pg_sys::build_column_default(rel, (i + 1) as i32);
                if !default.is_null() {
                    layout
                        .defaults
                        .push((i, pg_sys::expression_planner(default.cast())));
                }
            }
        }
    }
    if layout.attribute_of.contains(&usize::MAX) {
        return None;
    }
    let constraints = (*tupdesc).constr;
    if !constraints.is_null() {
        for i in 0..(*constraints).num_check as usize {
            let check = (*constraints).check.add(i);
            let expression = pg_sys::stringToNode((*check).ccbin);
            layout
                .checks
                .push(pg_sys::expression_planner(expression.cast()));
        }
    }
    let indexes = pg_sys::RelationGetIndexList(rel);
    if !indexes.is_null() {
        for i in 0..(*indexes).length as usize {
            let oid = (*(*indexes).elements.add(i)).oid_value;
            let name = pg_sys::get_rel_name(oid);
            if !name.is_null() && CStr::from_ptr(name) == EVENT_INDEX {
                layout.event_index = oid;
            }
        }
    }
    (layout.event_index != pg_sys::InvalidOid).then_some(layout)
}

impl DirectTable {
    /// None when the table is not eligible (see the module comment). `bulk`
    /// buffers rows for multi-inserts; otherwise rows go in one at a time.
    pub fn open(bulk: bool) -> Option<DirectTable> {
        unsafe {
            // The executor expects the caller to hold the lock, as DoCopy does.
            let locked = pg_sys::table_open(
                metrics_relid(),
                pg_sys::RowExclusiveLock as pg_sys::LOCKMODE,
            );
            let shape = current_shape(locked);
            let Some(layout) = shape.layout.as_ref() else {
                pg_sys::table_close(locked, pg_sys::NoLock as pg_sys::LOCKMODE);
                return None;
            };
            let estate = pg_sys::CreateExecutorState();
            pg_compat::init_range_table(
                estate,
                (*locked).rd_id,
                pg_sys::RELKIND_RELATION as std::ffi::c_char,
                pg_sys::RowExclusiveLock as pg_sys::LOCKMODE,
                pg_sys::ACL_INSERT as pg_sys::AclMode,
            );
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                as *mut pg_sys::ResultRelInfo;
            (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::ExecInitResultRelation(estate, rri, 1);
            pg_compat::check_valid_insert(rri);
            pg_sys::ExecOpenIndices(rri, true);
            let rel = (*rri).ri_RelationDesc;
            let constraints = (*(*rel).rd_att).constr;
            let has_constraints = !constraints.is_null();
            if has_constraints
                && (*constraints).num_check as usize == layout.checks.len()
                && !layout.checks.is_empty()
            {
                // ExecConstraints would parse and plan each CHECK for every call;
                // hand it the ones planned once, as ExecRelCheck would build them.
                let old = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
                let states = pg_sys::palloc(
                    layout.checks.len() * std::mem::size_of::<*mut pg_sys::ExprState>(),
                ) as *mut *mut pg_sys::ExprState;
                for (i, check) in layout.checks.iter().enumerate() {
                    *states.add(i) = pg_sys::ExecInitExpr(*check, null_mut());
                }
                pg_compat::set_check_constraint_exprs(rri, states);
                pg_sys::MemoryContextSwitchTo(old);
            }
            let defaults = layout
                .defaults
                .iter()
                .map(|&(i, expression)| (i, pg_sys::ExecInitExpr(expression, null_mut())))
                .collect();
            let cid = pg_sys::GetCurrentCommandId(true);
            (*estate).es_output_cid = cid;
            Some(DirectTable {
                locked,
                rel,
                estate,
                rri,
                econtext: pg_sys::MakePerTupleExprContext(estate),
                bistate: if bulk {
                    pg_sys::GetBulkInsertState()
                } else {
                    null_mut()
                },
                cid,
                arbiters: pg_sys::lappend_oid(null_mut(), layout.event_index),
                natts: layout.natts,
                attribute_of: layout.attribute_of,
                defaults,
                has_constraints,
                slots: Vec::new(),
                buffered_events: 0,
                buffered_ordinals: Vec::with_capacity(if bulk { MAX_BUFFERED } else { 0 }),
                late_duplicates: Vec::new(),
                expect_duplicates: false,
                batch_context: pg_sys::AllocSetContextCreateExtended(
                    pg_sys::CurrentMemoryContext,
                    c"metrics_ingest batch".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                ),
            })
        }
    }

    /// One row, written at once (insert_metric): no buffering, no bulk state.
    pub fn insert_now(
        &mut self,
        context: &Context,
        measurement: &Measurement,
        attributes: Option<pg_sys::Datum>,
    ) -> Buffered {
        unsafe {
            if self.slots.is_empty() {
                self.slots.push(pg_sys::table_slot_create(
                    self.rel,
                    &mut (*self.estate).es_tupleTable,
                ));
            }
            let slot = self.slots[0];
            self.fill(slot, context, measurement, attributes);
            let inserted = self.insert_one(slot);
            pg_sys::ExecClearTuple(slot);
            pg_sys::MemoryContextReset(self.batch_context);
            if inserted {
                Buffered::Inserted
            } else {
                Buffered::Duplicate
            }
        }
    }

    /// Called before an element's values are built: flushes when the element
    /// would not fit. No flush may happen in the middle of an element, since a
    /// flush frees the values built for it. (The same event twice in one buffer
    /// needs nothing here: the flush meets the conflict and redoes its rows.)
    pub fn make_room(&mut self, measurements: &[Measurement]) {
        if self.buffered() + measurements.len() > MAX_BUFFERED {
            self.flush();
        }
    }

    /// Buffers one metric row, or finds it is a duplicate. `attributes` is the
    /// element's jsonb, built by the caller in `batch_context()` after `make_room`.
    pub fn buffer(
        &mut self,
        ordinal: usize,
        context: &Context,
        measurement: &Measurement,
        attributes: Option<pg_sys::Datum>,
    ) -> Buffered {
        unsafe {
            let has_event = context.event_id.is_some();
            if self.buffered() == self.slots.len() {
                self.slots.push(pg_sys::table_slot_create(
                    self.rel,
                    &mut (*self.estate).es_tupleTable,
                ));
            }
            let slot = self.slots[self.buffered()];
            self.fill(slot, context, measurement, attributes);
            if has_event && self.expect_duplicates {
                let mut conflict = pg_sys::ItemPointerData::default();
                let free = pg_compat::check_index_constraints(
                    self.rri,
                    slot,
                    self.estate,
                    &mut conflict,
                    self.arbiters,
                );
                pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
                if !free {
                    pg_sys::ExecClearTuple(slot);
                    return Buffered::Duplicate;
                }
            }
            if has_event {
                self.buffered_events += 1;
            }
            self.buffered_ordinals.push(ordinal);
            Buffered::Inserted
        }
    }

    /// Rows waiting for the next flush.
    fn buffered(&self) -> usize {
        self.buffered_ordinals.len()
    }

    pub fn batch_context(&self) -> pg_sys::MemoryContext {
        self.batch_context
    }

    unsafe fn fill(
        &mut self,
        slot: *mut pg_sys::TupleTableSlot,
        context: &Context,
        measurement: &Measurement,
        attributes: Option<pg_sys::Datum>,
    ) {
        pg_sys::ExecClearTuple(slot);
        let values = std::slice::from_raw_parts_mut((*slot).tts_values, self.natts);
        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, self.natts);
        nulls.fill(true);
        let old = pg_sys::MemoryContextSwitchTo(self.batch_context);
        let supplied = super::writer::supplied_values(context, measurement, attributes);
        for (k, datum) in supplied.into_iter().enumerate() {
            if let Some(datum) = datum {
                values[self.attribute_of[k]] = datum;
                nulls[self.attribute_of[k]] = false;
            }
        }
        for &(i, state) in &self.defaults {
            let evaluate = (*state)
                .evalfunc
                .unwrap_or_else(|| raise_internal("defaults", "no evalfunc"));
            let econtext = self.econtext;
            let is_null = &mut nulls[i];
            // A default can raise (a sequence at its end): keep the longjmp off Rust frames.
            values[i] = pg_sys::ffi::pg_guard_ffi_boundary(|| evaluate(state, econtext, is_null));
        }
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::ExecStoreVirtualTuple(slot);
        if self.has_constraints {
            pg_sys::ExecConstraints(self.rri, slot, self.estate);
            pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
        }
    }

    /// Writes the buffered rows. See the module comment for the race handling.
    pub fn flush(&mut self) {
        if self.buffered() == 0 {
            return;
        }
        unsafe {
            let guarded = self.buffered_events > 0;
            let (memory, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
            if guarded {
                // Pins cached by index AMs belong to the current resource owner.
                pg_compat::index_insert_cleanup(self.rri);
                pg_sys::BeginInternalSubTransaction(null_mut());
                pg_sys::MemoryContextSwitchTo(memory);
            }
            let written = catch_unwind(AssertUnwindSafe(|| self.write_buffered(guarded)));
            // A buffer pin taken inside the subtransaction must not outlive it.
            pg_sys::ReleaseBulkInsertStatePin(self.bistate);
            pg_compat::index_insert_cleanup(self.rri);
            let raced = match written {
                Ok(raced) => raced,
                Err(error) => {
                    // A cancel, a timeout or any other error: end the subtransaction
                    // before the error goes on, as a PL/pgSQL exception block does,
                    // or the session would be left inside it.
                    if guarded {
                        pg_sys::RollbackAndReleaseCurrentSubTransaction();
                        pg_sys::MemoryContextSwitchTo(memory);
                        pg_sys::CurrentResourceOwner = owner;
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
                pg_sys::MemoryContextSwitchTo(memory);
                pg_sys::CurrentResourceOwner = owner;
            }
            self.expect_duplicates = raced;
            if raced {
                for i in 0..self.buffered() {
                    if !self.insert_one(self.slots[i]) {
                        self.late_duplicates.push(self.buffered_ordinals[i]);
                    }
                }
            }
            for &slot in &self.slots[..self.buffered()] {
                pg_sys::ExecClearTuple(slot);
            }
            pg_sys::MemoryContextReset(self.batch_context);
        }
        self.buffered_events = 0;
        self.buffered_ordinals.clear();
    }

    /// The multi-insert and its index entries; true if an event key conflicted
    /// (only looked for when `guarded`: rows without an event_id cannot conflict).
    unsafe fn write_buffered(&mut self, guarded: bool) -> bool {
        pg_sys::table_multi_insert(
            self.rel,
            self.slots.as_mut_ptr(),
            self.buffered() as i32,
            self.cid,
            0,
            self.bistate,
        );
        let arbiters = if guarded { self.arbiters } else { null_mut() };
        let mut raced = false;
        for &slot in &self.slots[..self.buffered()] {
            let mut conflict = false;
            let recheck = pg_compat::insert_index_tuples(
                self.rri,
                slot,
                self.estate,
                guarded,
                Some(&mut conflict),
                arbiters,
            );
            pg_sys::list_free(recheck);
            raced |= conflict;
            pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
        }
        raced
    }

    /// One row through speculative insertion: true if stored, false if a duplicate.
    unsafe fn insert_one(&mut self, slot: *mut pg_sys::TupleTableSlot) -> bool {
        let has_event = !*(*slot).tts_isnull.add(self.attribute_of[EVENT_ID]);
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
            pg_sys::list_free(recheck);
            pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
            return true;
        }
        loop {
            let mut conflict_tid = pg_sys::ItemPointerData::default();
            if !pg_compat::check_index_constraints(
                self.rri,
                slot,
                self.estate,
                &mut conflict_tid,
                self.arbiters,
            ) {
                return false;
            }
            let xid = pg_sys::GetCurrentTransactionId();
            let token = pg_sys::SpeculativeInsertionLockAcquire(xid);
            pg_sys::table_tuple_insert_speculative(self.rel, slot, self.cid, 0, null_mut(), token);
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
            pg_sys::list_free(recheck);
            pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
            if !conflict {
                return true;
            }
        }
    }

    /// Flushes and releases everything; returns the ordinals of elements whose
    /// rows turned out to be duplicates at flush time (one entry per row).
    pub fn close(mut self) -> Vec<usize> {
        self.flush();
        unsafe {
            if !self.bistate.is_null() {
                pg_sys::FreeBulkInsertState(self.bistate);
                pg_sys::table_finish_bulk_insert(self.rel, 0);
            }
            pg_sys::MemoryContextDelete(self.batch_context);
            self.close_executor();
        }
        std::mem::take(&mut self.late_duplicates)
    }

    unsafe fn close_executor(&mut self) {
        pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
        pg_sys::ExecCloseResultRelations(self.estate);
        pg_sys::ExecCloseRangeTableRelations(self.estate);
        pg_sys::FreeExecutorState(self.estate);
        pg_sys::table_close(self.locked, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}
