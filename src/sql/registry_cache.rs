//! A per-backend copy of `metrics_ingest.metric_types`, loaded on first use and
//! dropped when the table changes (its statement trigger, ENABLE ALWAYS, sends a
//! relcache invalidation, delivered here at commit like any catalog change).
//! A copy read under a snapshot that may predate a change whose invalidation
//! was already processed (REPEATABLE READ, SERIALIZABLE, or an invalidation
//! arriving mid-load) serves only the transaction that loaded it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use pgrx::prelude::*;

use super::errors::raise_internal;
use crate::core::element::preview_str;
use crate::core::registry::{MetricTypeRule, Registry, ValueKind};

/// A loaded registry, with what decides how long it may be kept.
struct Cached {
    /// metric_types' OID, whose relcache invalidation drops the copy.
    relid: pg_sys::Oid,
    /// Some(local transaction id) when loaded under a transaction snapshot
    /// (REPEATABLE READ, SERIALIZABLE): the rows are as of that snapshot, which
    /// may predate a change whose invalidation this backend has already
    /// consumed, so the copy is good for that transaction only.
    only_in: Option<pg_sys::LocalTransactionId>,
    registry: Rc<Registry>,
}

thread_local! {
    static CACHED: RefCell<Option<Cached>> = const { RefCell::new(None) };
    /// metric_types' OID once known (the cache may be empty while loading).
    static WATCHED: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// Counts the invalidations of metric_types this backend has processed: a
    /// load that sees it move was perhaps made with rows older than the change.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_relcache_invalidation(
    _arg: pg_sys::Datum,
    relid: pg_sys::Oid,
) {
    let watched = WATCHED.with(Cell::get);
    let cached_relid = CACHED.with(|c| c.borrow().as_ref().map(|c| c.relid));
    if relid == pg_sys::InvalidOid || relid == watched || cached_relid == Some(relid) {
        GENERATION.with(|g| g.set(g.get() + 1));
        CACHED.with(|c| *c.borrow_mut() = None);
    }
}

/// This backend's current local transaction id.
fn local_xid() -> pg_sys::LocalTransactionId {
    // SAFETY: MyProc is set for every backend before any SQL runs, and lxid is
    // only written by this backend; we read it on the backend's only thread.
    unsafe { super::pg_compat::local_transaction_id() }
}

pub fn registry() -> Rc<Registry> {
    let kept = CACHED.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|c| c.only_in.is_none_or(|lxid| lxid == local_xid()))
            .map(|c| Rc::clone(&c.registry))
    });
    if let Some(registry) = kept {
        return registry;
    }
    let (relid, registry, generation) = load();
    // SAFETY: a plain read of a backend-local GUC variable, on the backend's thread.
    let transaction_snapshot =
        unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    // Kept past this transaction only if read with a snapshot taken after every
    // invalidation processed so far, and none arrived while loading.
    let current = !transaction_snapshot && GENERATION.with(Cell::get) == generation;
    let registry = Rc::new(registry);
    CACHED.with(|c| {
        *c.borrow_mut() = Some(Cached {
            relid,
            only_in: (!current).then(local_xid),
            registry: Rc::clone(&registry),
        })
    });
    registry
}

/// Reads metric_types: its OID, the invalidation count once it is locked (all
/// invalidations sent before are then processed), and its rows as of a
/// snapshot taken after that (under READ COMMITTED; a transaction snapshot
/// under REPEATABLE READ and SERIALIZABLE, which the caller allows for).
fn load() -> (pg_sys::Oid, Registry, u64) {
    // By name, not from a row: an empty registry still has a table to watch.
    const RELID: &str = "SELECT 'metrics_ingest.metric_types'::pg_catalog.regclass::pg_catalog.oid";
    // 0.3.0's users table: without it (an older catalog, before ALTER EXTENSION
    // UPDATE), profiles and platform stay in attributes and no rollups are kept.
    // ALTER EXTENSION UPDATE to 0.3.0 changes metric_types' CHECK, which
    // invalidates this copy.
    const PROFILES: &str = "SELECT pg_catalog.to_regclass('metrics_ingest.users') IS NOT NULL";
    let loaded = Spi::connect(
        |client| -> Result<(pg_sys::Oid, Vec<MetricTypeRule>, u64, bool), pgrx::spi::Error> {
            let relid = client
                .select(RELID, None, &[])?
                .first()
                .get_one::<pg_sys::Oid>()?
                .unwrap_or(pg_sys::InvalidOid);
            WATCHED.with(|w| w.set(relid));
            // SAFETY: relid is metric_types' OID, just looked up; the lock is
            // released at transaction end, and locking processes pending invalidations.
            unsafe { pg_sys::LockRelationOid(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
            let generation = GENERATION.with(Cell::get);
            // SAFETY: pushed and popped around one query on this thread; if the
            // query raises an ERROR, transaction abort pops it.
            unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
            let rules = read_rules(client);
            // SAFETY: pops the snapshot pushed just above (read_rules pushes none of its own
            // that it leaves behind: SPI pops what it pushes).
            unsafe { pg_sys::PopActiveSnapshot() };
            let profiles = client
                .select(PROFILES, None, &[])?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            Ok((relid, rules?, generation, profiles))
        },
    );
    match loaded {
        Ok((relid, rules, generation, true)) => (relid, Registry::new(rules), generation),
        Ok((relid, rules, generation, false)) => {
            (relid, Registry::new(rules).without_profiles(), generation)
        }
        Err(e) => raise_internal("loading metric_types", e),
    }
}

fn read_rules(client: &pgrx::spi::SpiClient<'_>) -> Result<Vec<MetricTypeRule>, pgrx::spi::Error> {
    const QUERY: &str = "SELECT metric_type, value_kind, min_value, max_value, labels::text \
                         FROM metrics_ingest.metric_types";
    let mut rules = Vec::new();
    for row in client.select(QUERY, None, &[])? {
        let name: String = row.get(1)?.unwrap_or_default();
        let kind_text: String = row.get(2)?.unwrap_or_default();
        let labels_text: String = row.get(5)?.unwrap_or_else(|| "{}".into());
        let Some(kind) = ValueKind::parse(&kind_text) else {
            raise_internal(
                "metric_types",
                format!(
                    "unknown value_kind \"{}\" for {}",
                    preview_str(&kind_text),
                    preview_str(&name)
                ),
            )
        };
        let labels = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(
            &labels_text,
        ) {
            Ok(map) => map
                .into_iter()
                .filter_map(|(label, score)| score.as_f64().map(|s| (label, s)))
                .collect(),
            Err(e) => raise_internal("metric_types.labels", e),
        };
        rules.push(MetricTypeRule {
            name,
            kind,
            min: row.get(3)?,
            max: row.get(4)?,
            labels,
        });
    }
    Ok(rules)
}

/// The trigger on metric_types: invalidate every backend's cached registry.
#[pg_trigger(sql = false)]
fn metric_types_changed<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let relid = trigger.relid()?;
    // SAFETY: relid is the trigger's own table, which exists while its trigger
    // runs; the call only queues an invalidation message for it.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None)
}
