//! Storing validated elements: the router over the two sinks.
//!
//! Each element goes to the partition its timestamp falls in (all rows of an
//! element share it), made on demand by `metrics_ingest.partition_for` when
//! there is none. A partition the fast path may write gets a `DirectLeaf`
//! (one multi-insert buffer per partition, as COPY keeps, at most
//! `MAX_OPEN_LEAVES` open at once); every other row takes the `InsertPath`,
//! or, when Citus distributes the table, the `SetwiseInsert`.
//! A plain (unpartitioned) metrics table is its own single leaf.

use std::cell::Cell;
use std::rc::Rc;

use pgrx::pg_sys;

use super::contention::{self, Blocker, Contention};
use super::datum::timestamptz_datum;
use super::dead_letters;
use super::direct::DirectLeaf;
use super::errors::raise_internal;
use super::insert_path::{kept_plan, InsertPath};
use super::rollups;
use super::settings::retention_horizon;
use super::setwise::SetwiseInsert;
use super::sink::{LateRepeat, Repeat, Sink, Stored};
use super::table::{self, Route, TableShape};
use crate::core::element::ValidElement;
use crate::core::error::{Rejection, RejectionKind};
use crate::core::rollup::Rollup;
use crate::core::timestamp::{describe_unix_us, PG_EPOCH_OFFSET_US};

/// Partitions with a buffer of their own at once, as COPY's MAX_PARTITION_BUFFERS.
const MAX_OPEN_LEAVES: usize = 32;

/// The `source` of dead letters: only ingest_json keeps them (insert_metric raises).
const DEAD_LETTER_SOURCE: &str = "ingest_json";
const PARTITION_FOR: &str = "SELECT metrics_ingest.partition_for($1)";

thread_local! {
    static PARTITION_FOR_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// Which kind of call is writing.
#[derive(Clone, Copy, PartialEq)]
pub enum Path {
    /// Batches: rows are buffered for multi-inserts.
    Bulk,
    /// One event: written at once.
    Single,
}

#[derive(Clone, Copy)]
enum Target {
    Direct(usize),
    Insert,
}

/// Open for the duration of one SQL call.
pub struct Writer {
    path: Path,
    table: Rc<TableShape>,
    routes: Rc<Vec<Route>>,
    targets: Vec<(pg_sys::Oid, Target)>,
    direct: Vec<DirectLeaf>,
    insert: Option<Box<dyn Sink>>,
    /// SPI is connected on first need: the fast path does without it.
    spi_connected: bool,
    caller_context: pg_sys::MemoryContext,
    dead_letters: dead_letters::DeadLetters,
    late_repeats: Vec<LateRepeat>,
    /// What the stored rows add to sessions, daily totals and users; None on a
    /// catalog older than 0.3.0, which has none of them.
    rollup: Option<Rollup>,
    /// Oldest storable time (timestamptz microseconds) and the retention, if set.
    horizon: Option<(i64, String)>,
    /// Set when this attempt may give way to another transaction (contention.rs).
    contention: Contention,
}

impl Writer {
    /// `rollups`: whether the catalog has sessions, daily totals and users
    /// (0.3.0 on) to keep up to date. `contention`: where an attempt that may
    /// give way records it (None: wait as INSERT does).
    pub fn open(path: Path, rollups: bool, contention: &Contention) -> Writer {
        let relid = table::lock_metrics();
        table::check_insert_privilege(relid);
        // SAFETY: the table is locked (ROW EXCLUSIVE, until the transaction ends)
        // and opened only while its shape and partition bounds are read.
        let (table, routes) = unsafe {
            let rel = pg_sys::table_open(relid, pg_sys::NoLock as pg_sys::LOCKMODE);
            let shape = table::table_shape(rel);
            let routes = if shape.partitioned {
                table::cached_routes(rel)
            } else {
                Rc::new(Vec::new())
            };
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            (shape, routes)
        };
        Writer {
            path,
            table,
            routes,
            targets: Vec::new(),
            direct: Vec::new(),
            insert: None,
            spi_connected: false,
            // SAFETY: reading the current context pointer.
            caller_context: unsafe { pg_sys::CurrentMemoryContext },
            dead_letters: dead_letters::DeadLetters::new(contention),
            late_repeats: Vec::new(),
            rollup: rollups.then(Rollup::default),
            horizon: retention_horizon(),
            contention: contention.clone(),
        }
    }

    /// What this attempt gave way to, if it did: its rows are not all written,
    /// and it must be rolled back and made again (contention.rs). The caller
    /// stores and rejects nothing more once it did.
    pub fn gave_way(&self) -> Option<Blocker> {
        contention::gave_way(&self.contention)
    }

    fn connect_spi(&mut self) {
        if self.spi_connected {
            return;
        }
        // SAFETY: SPI_connect switches to SPI's procedure context; switching
        // back keeps this call's allocations in its own context until
        // SPI_finish in `finish` (which returns to the caller's context).
        unsafe {
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                raise_internal("SPI_connect", "failed");
            }
            pg_sys::MemoryContextSwitchTo(self.caller_context);
        }
        self.spi_connected = true;
    }

    /// Refuses an element older than the retention horizon: it would be
    /// dropped with its partition at the next run_maintenance.
    pub fn check_retention(&self, element: &ValidElement) -> Result<(), Rejection> {
        match &self.horizon {
            Some((horizon, retention)) if element.context.unix_us - PG_EPOCH_OFFSET_US < *horizon => {
                Err(Rejection::new(
                    RejectionKind::OutOfRange,
                    "timestamp",
                    format!(
                        "is older than the retention of {retention} (metrics_ingest.set_retention): it would be dropped at the next run_maintenance"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Stores an element's rows (or buffers them for a later flush), or
    /// refuses the element when a constraint of the table refuses one of them
    /// (nothing of it is stored then, and the rollups do not count it).
    pub fn store(&mut self, ordinal: usize, element: &ValidElement) -> Result<Stored, Rejection> {
        let relid = if self.table.partitioned {
            match self.partition_for(element.context.unix_us - PG_EPOCH_OFFSET_US)? {
                Some(relid) => relid,
                None => return Ok(Stored::default()),
            }
        } else {
            self.table.relid
        };
        let stored = match self.target(relid) {
            Target::Direct(i) => self.direct[i].put(ordinal, element),
            Target::Insert => {
                self.connect_spi();
                let (rules, distributed) = (self.table.has_rules, self.table.distributed);
                let stored = self
                    .insert
                    .get_or_insert_with(|| -> Box<dyn Sink> {
                        if distributed {
                            Box::new(SetwiseInsert::new())
                        } else {
                            Box::new(InsertPath::new(rules))
                        }
                    })
                    .put(ordinal, element);
                self.back_from_spi();
                stored
            }
        };
        let stored = stored?;
        if let Some(rollup) = self.rollup.as_mut() {
            rollup.add(ordinal, element);
            for &(measurement, refused) in &stored.not_stored {
                rollup.not_stored(ordinal, measurement, refused);
            }
        }
        Ok(stored)
    }

    /// SPI returns to its procedure context after each call; this call's own
    /// allocations belong in the caller's context.
    fn back_from_spi(&self) {
        // SAFETY: the caller's context outlives this writer.
        unsafe { pg_sys::MemoryContextSwitchTo(self.caller_context) };
    }

    /// The partition for `pg_us`, made if there is none; None if this attempt
    /// must give way to another session making partitions; the element's
    /// rejection if the partition holding the time takes no rows.
    fn partition_for(&mut self, pg_us: i64) -> Result<Option<pg_sys::Oid>, Rejection> {
        if let Some(relid) = table::route(&self.routes, pg_us) {
            return Ok(Some(relid));
        }
        // Another session may have made it since the bounds were read.
        self.reload_routes();
        if let Some(relid) = table::route(&self.routes, pg_us) {
            return Ok(Some(relid));
        }
        if !contention::try_partition_lock(&self.contention, self.table.relid) {
            return Ok(None);
        }
        self.connect_spi();
        let plan = kept_plan(
            &PARTITION_FOR_PLAN,
            PARTITION_FOR,
            &[pg_sys::TIMESTAMPTZOID],
        );
        // SAFETY: SPI is connected; the one parameter is a by-value timestamptz.
        unsafe {
            let values = [timestamptz_datum(pg_us + PG_EPOCH_OFFSET_US)];
            let status =
                pg_sys::SPI_execute_plan(plan, values.as_ptr().cast_mut(), c" ".as_ptr(), false, 1);
            if status != pg_sys::SPI_OK_SELECT as i32 {
                raise_internal("making a partition", format!("SPI status {status}"));
            }
        }
        self.back_from_spi();
        self.reload_routes();
        // partition_for returns a partition of metrics holding the time. One that
        // takes no rows (a DBA is detaching it: DETACH PARTITION ... CONCURRENTLY
        // not finished) refuses the element, as INSERT would refuse the row
        // (23514), instead of failing the call (0.3.2: 55000; 0.3.3 before this:
        // 42P17, making a partition overlapping it).
        match table::route(&self.routes, pg_us) {
            Some(relid) => Ok(Some(relid)),
            None => Err(Rejection::new(
                RejectionKind::CheckViolation,
                "timestamp",
                format!(
                    "{} falls in a partition of metrics_ingest.metrics that takes no rows now (being detached: DETACH PARTITION ... CONCURRENTLY not finished)",
                    describe_unix_us(pg_us + PG_EPOCH_OFFSET_US)
                ),
            )),
        }
    }

    fn reload_routes(&mut self) {
        // SAFETY: the table is still locked by this transaction; it is opened
        // only while its partition descriptor is copied.
        unsafe {
            pg_sys::AcceptInvalidationMessages();
            let rel = pg_sys::table_open(self.table.relid, pg_sys::NoLock as pg_sys::LOCKMODE);
            self.routes = table::cached_routes(rel);
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }

    fn target(&mut self, relid: pg_sys::Oid) -> Target {
        if let Some(&(_, target)) = self.targets.iter().rev().find(|(oid, _)| *oid == relid) {
            return target;
        }
        let target = if self.table.insert_path.is_some() {
            Target::Insert
        } else {
            if self.direct.len() == MAX_OPEN_LEAVES {
                self.close_leaves();
            }
            // SAFETY: the partition is opened with the partitioned table's lock mode
            // only while its layout is read; DirectLeaf::open opens it for writing.
            let layout = unsafe {
                let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                let layout = table::leaf_layout(rel, &self.table);
                pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
                layout
            };
            if layout.insert_path.is_some() {
                Target::Insert
            } else {
                let bulk = self.path == Path::Bulk;
                let leaf = DirectLeaf::open(
                    relid,
                    Rc::clone(&self.table),
                    layout,
                    bulk,
                    self.contention.clone(),
                );
                self.direct.push(leaf);
                Target::Direct(self.direct.len() - 1)
            }
        };
        self.targets.push((relid, target));
        target
    }

    /// Flushes and closes every open leaf (their partitions stay locked).
    fn close_leaves(&mut self) {
        for leaf in self.direct.drain(..) {
            self.late_repeats.extend(Box::new(leaf).finish());
        }
        self.targets
            .retain(|(_, target)| matches!(target, Target::Insert));
    }

    /// Keeps one dead letter, written with the call's others (dead_letters.rs),
    /// unless this attempt gives way instead of waiting for another keeping it.
    pub fn reject(&mut self, ordinal: usize, element: &str, rejection: &Rejection) {
        if self.dead_letters.push(ordinal, element, rejection) {
            self.write_dead_letters();
        }
    }

    fn write_dead_letters(&mut self) {
        if !self.dead_letters.has_pending() {
            return;
        }
        self.connect_spi();
        self.dead_letters.write(DEAD_LETTER_SOURCE);
        self.back_from_spi();
    }

    /// Writes what is buffered, then the rollups of what was stored; returns
    /// the ordinals of elements one of whose rows turned out, at flush time, to
    /// repeat a stored event after all (one entry per such row). `Err` when
    /// this attempt gave way to another transaction (contention.rs): nothing
    /// more is written, and the caller rolls the attempt back.
    pub fn finish(mut self) -> Result<Vec<(usize, Repeat)>, Blocker> {
        self.close_leaves();
        if let Some(insert) = self.insert.take() {
            self.late_repeats.extend(insert.finish());
        }
        if let Some(blocker) = self.gave_way() {
            self.release();
            return Err(blocker);
        }
        self.write_dead_letters();
        if let Some(mut rollup) = self.rollup.take() {
            for late in &self.late_repeats {
                let refused = late.repeat != Repeat::Duplicate;
                rollup.not_stored(late.ordinal, late.measurement, refused);
            }
            if !rollup.is_empty() {
                let summary = rollup.finish();
                self.connect_spi();
                rollups::write(&summary);
                self.back_from_spi();
            }
        }
        self.release();
        Ok(self
            .late_repeats
            .iter()
            .map(|late| (late.ordinal, late.repeat))
            .collect())
    }

    /// Closes the dead letters' key look-ups and SPI, before the attempt's
    /// subtransaction ends.
    fn release(&mut self) {
        self.dead_letters.close();
        if self.spi_connected {
            self.spi_connected = false;
            // SAFETY: SPI was connected by this writer and is finished once.
            unsafe { pg_sys::SPI_finish() };
        }
    }
}
