//! Dead letters: every rejected element goes to metrics_ingest.rejected, as
//! received, with its reason. A call keeps its dead letters as it judges its
//! elements and writes them in one statement (per 1,000, or per 4 MB of
//! element text) before its rollups, in the order they were judged: one
//! executor run instead of one per bad element, which cost a batch with 1 %
//! bad elements about a tenth of its speed.
//!
//! An element with a readable event_id is kept once per exact text (the unique
//! index rejected_event_key on (event_id, md5(element))): the same bad element
//! sent again (a replayed micro-batch, a client's retry, or twice in one call)
//! conflicts and adds nothing. Without an event_id nothing can conflict, and
//! every copy is kept.
//!
//! That conflict makes a call wait when another transaction is keeping the
//! same dead letter; a call that may give way (contention.rs) looks the key up
//! first, without waiting, through `KeyProbe`, as it judges the element.

use std::cell::Cell;

use pgrx::{pg_sys, PgMemoryContexts};

use super::contention::{self, Contention, Probe};
use super::datum::{array_column, text_datum};
use super::errors::raise_internal;
use super::insert_path::execute_kept;
use super::table;
use crate::core::element::rejected_ids;
use crate::core::error::Rejection;

/// The arrays are unnested in the select list, in step, in the order the
/// letters were judged (see rollups.rs for why not in FROM).
const INSERT_REJECTED: &str = "INSERT INTO metrics_ingest.rejected \
    (source, ordinal, element, field, error, sqlstate, user_id, event_id) \
    SELECT $1, pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), \
        pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8) \
    ON CONFLICT DO NOTHING";
/// The dead-letter insert of a 0.1.x catalog, whose `rejected` has no user_id or
/// event_id yet: the library is replaced before `ALTER EXTENSION ... UPDATE` runs,
/// and must keep working in between. It takes the first six parameters.
const INSERT_REJECTED_0_1: &str = "INSERT INTO metrics_ingest.rejected \
    (source, ordinal, element, field, error, sqlstate) \
    SELECT $1, pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), \
        pg_catalog.unnest($5), pg_catalog.unnest($6)";

/// Letters kept before they are written: at most this many...
const MAX_PENDING: usize = 1000;
/// ...and at most this much element text.
const MAX_PENDING_BYTES: usize = 4 << 20;

thread_local! {
    static REJECTED_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static REJECTED_PLAN_0_1: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// One rejected element, judged and not yet written.
struct Letter {
    ordinal: i32,
    element: String,
    field: String,
    message: String,
    sqlstate: &'static str,
    user_id: Option<String>,
    event_id: Option<String>,
}

/// A call's dead letters not yet written, where they are built, and how their
/// keys are looked up.
pub struct DeadLetters {
    memory: PgMemoryContexts,
    contention: Contention,
    /// Opened on the first dead letter with an event_id of a call that may give way.
    probe: Option<KeyProbe>,
    pending: Vec<Letter>,
    pending_bytes: usize,
    /// `rejected_has_ids()`, asked once per call: a call does not see the
    /// catalog change under it.
    has_ids: Option<bool>,
}

impl DeadLetters {
    pub fn new(contention: &Contention) -> DeadLetters {
        DeadLetters {
            memory: PgMemoryContexts::new("metrics_ingest dead letters"),
            contention: contention.clone(),
            probe: None,
            pending: Vec::new(),
            pending_bytes: 0,
            has_ids: None,
        }
    }

    /// Whether `rejected` has user_id and event_id (see `rejected_has_ids`).
    fn has_ids(&mut self) -> bool {
        *self.has_ids.get_or_insert_with(rejected_has_ids)
    }

    /// Keeps one dead letter for the next `write`, unless the call gives way
    /// to an older transaction keeping the same one (`contention` records
    /// it; nothing more is written in this attempt). True when enough letters
    /// wait that the caller should write them now.
    pub fn push(&mut self, ordinal: usize, element: &str, rejection: &Rejection) -> bool {
        let ids = rejected_ids(element);
        if let Some(event_id) = ids.event_id.as_deref() {
            if self.has_ids() && self.must_give_way(event_id, element) {
                return false;
            }
        }
        self.pending_bytes += element.len();
        self.pending.push(Letter {
            ordinal: i32::try_from(ordinal).unwrap_or(i32::MAX),
            element: element.to_owned(),
            field: rejection.field.clone(),
            message: rejection.message.clone(),
            sqlstate: rejection.kind.sqlstate(),
            user_id: ids.user_id,
            event_id: ids.event_id,
        });
        self.pending.len() >= MAX_PENDING || self.pending_bytes >= MAX_PENDING_BYTES
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the letters kept so far, in one statement, and forgets them. The
    /// same letter twice (same event_id and text) is kept once, as across calls.
    /// SPI must be connected.
    pub fn write(&mut self, source: &str) {
        if self.pending.is_empty() {
            return;
        }
        let with_ids = self.has_ids();
        let letters = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let text = |s: &str| Some(text_datum(s));
        let maybe = |s: &Option<String>| s.as_deref().map(text_datum);
        // SAFETY: the parameters are built in `memory`, which outlives the SPI
        // call and is reset after it.
        let status = unsafe {
            self.memory.switch_to(|_| {
                let mut parameters = vec![
                    (text_datum(source), pg_sys::TEXTOID),
                    array_column(
                        &letters,
                        |l| Some(pg_sys::Datum::from(l.ordinal)),
                        pg_sys::INT4OID,
                    ),
                    array_column(&letters, |l| text(&l.element), pg_sys::TEXTOID),
                    array_column(&letters, |l| text(&l.field), pg_sys::TEXTOID),
                    array_column(&letters, |l| text(&l.message), pg_sys::TEXTOID),
                    array_column(&letters, |l| text(l.sqlstate), pg_sys::TEXTOID),
                ];
                if with_ids {
                    parameters.push(array_column(
                        &letters,
                        |l| maybe(&l.user_id),
                        pg_sys::TEXTOID,
                    ));
                    parameters.push(array_column(
                        &letters,
                        |l| maybe(&l.event_id),
                        pg_sys::TEXTOID,
                    ));
                    execute_kept(&REJECTED_PLAN, INSERT_REJECTED, &parameters)
                } else {
                    execute_kept(&REJECTED_PLAN_0_1, INSERT_REJECTED_0_1, &parameters)
                }
            })
        };
        // SAFETY: nothing built in `memory` is used past this point.
        unsafe { pg_sys::MemoryContextReset(self.memory.value()) };
        // A DO INSTEAD rule on rejected turns the INSERT into other statements.
        if status != pg_sys::SPI_OK_INSERT as i32 && status != pg_sys::SPI_OK_REWRITTEN as i32 {
            raise_internal("inserting into rejected", format!("SPI status {status}"));
        }
    }

    /// Releases what the key lookups opened.
    pub fn close(&mut self) {
        if let Some(probe) = self.probe.take() {
            probe.close();
        }
    }

    /// Whether the call must give way (contention.rs, which records it) rather
    /// than wait while keeping a dead letter with this event_id: an older
    /// transaction is keeping the same one.
    fn must_give_way(&mut self, event_id: &str, element: &str) -> bool {
        if self.contention.is_none() {
            return false;
        }
        let probe = self.probe.get_or_insert_with(KeyProbe::open);
        probe
            .look_up(event_id, element)
            .is_some_and(|xid| !contention::may_wait(&self.contention, xid))
    }
}

/// `rejected` opened with its unique indexes, to look a dead letter's key up.
struct KeyProbe {
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    found: *mut pg_sys::TupleTableSlot,
    /// Positions of the ready, immediate unique indexes (rejected_event_key).
    unique: Vec<usize>,
    element_attribute: usize,
    event_id_attribute: usize,
}

impl KeyProbe {
    fn open() -> KeyProbe {
        let relid = table::extension_relation(c"rejected");
        // SAFETY: `rejected` is opened as the INSERT that follows opens it; the
        // executor state and slots are released in `close` (or with the
        // subtransaction, on an error).
        unsafe {
            let (rel, estate, rri) = table::open_for_insert(relid);
            let unique = (0..(*rri).ri_NumIndices.max(0) as usize)
                .filter(|&i| table::is_immediate_unique(rri, i))
                .collect();
            let attribute = |name: &std::ffi::CStr| {
                (pg_sys::get_attnum(relid, name.as_ptr()) as usize).saturating_sub(1)
            };
            KeyProbe {
                slot: pg_sys::table_slot_create(rel, &mut (*estate).es_tupleTable),
                found: pg_sys::table_slot_create(rel, &mut (*estate).es_tupleTable),
                rel,
                estate,
                rri,
                unique,
                element_attribute: attribute(c"element"),
                event_id_attribute: attribute(c"event_id"),
            }
        }
    }

    /// The transaction in progress keeping a dead letter with this key, if any.
    fn look_up(&mut self, event_id: &str, element: &str) -> Option<pg_sys::TransactionId> {
        // SAFETY: the slot belongs to `rejected`, so its arrays hold natts
        // entries and both attribute numbers come from its catalog; the text
        // datums live in the per-tuple memory, reset before returning.
        unsafe {
            let slot = self.slot;
            pg_sys::ExecClearTuple(slot);
            let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
            std::slice::from_raw_parts_mut((*slot).tts_isnull, natts).fill(true);
            let econtext = pg_sys::MakePerTupleExprContext(self.estate);
            let values = (*slot).tts_values;
            let nulls = (*slot).tts_isnull;
            let (event_id_at, element_at) = (self.event_id_attribute, self.element_attribute);
            PgMemoryContexts::For((*econtext).ecxt_per_tuple_memory).switch_to(|_| {
                *values.add(event_id_at) = text_datum(event_id);
                *nulls.add(event_id_at) = false;
                *values.add(element_at) = text_datum(element);
                *nulls.add(element_at) = false;
            });
            pg_sys::ExecStoreVirtualTuple(slot);
            let mut in_progress = None;
            for &index in &self.unique {
                if let Probe::InProgress(xid) =
                    contention::probe(self.rri, self.estate, index, slot, self.found)
                {
                    in_progress = Some(xid);
                    break;
                }
            }
            pg_sys::ExecClearTuple(slot);
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            in_progress
        }
    }

    fn close(self) {
        // SAFETY: what `open` opened, released once.
        unsafe { table::close_for_insert(self.rel, self.estate, self.rri) };
    }
}

/// Whether `metrics_ingest.rejected` has the columns of 0.2.0 (user_id, event_id;
/// the upgrade adds them with the unique index rejected_event_key). False between
/// installing this library and `ALTER EXTENSION metrics_ingest UPDATE` from 0.1.x,
/// when dead letters are written as 0.1.x wrote them. Three syscache lookups.
fn rejected_has_ids() -> bool {
    let relid = table::extension_relation(c"rejected");
    // SAFETY: a syscache lookup by a static NUL-terminated name; nothing is kept.
    unsafe {
        relid != pg_sys::InvalidOid
            && pg_sys::get_attnum(relid, c"event_id".as_ptr())
                != pg_sys::InvalidAttrNumber as pg_sys::AttrNumber
    }
}
