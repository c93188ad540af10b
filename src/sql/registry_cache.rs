//! A per-backend copy of `metrics_ingest.metric_types`, loaded on first use and
//! dropped when the table changes (its statement trigger sends a relcache
//! invalidation, delivered here at commit like any catalog change).

use std::cell::RefCell;
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
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_relcache_invalidation(
    _arg: pg_sys::Datum,
    relid: pg_sys::Oid,
) {
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if relid == pg_sys::InvalidOid || cached.as_ref().is_some_and(|c| c.relid == relid) {
            *cached = None;
        }
    });
}

/// This backend's current local transaction id.
fn local_xid() -> pg_sys::LocalTransactionId {
    // SAFETY: MyProc is set for every backend before any SQL runs, and lxid is
    // only written by this backend; we read it on the backend's only thread.
    unsafe { (*pg_sys::MyProc).lxid }
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
    let (relid, registry) = load();
    // SAFETY: a plain read of a backend-local GUC variable, on the backend's thread.
    let transaction_snapshot =
        unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    let registry = Rc::new(registry);
    CACHED.with(|c| {
        *c.borrow_mut() = Some(Cached {
            relid,
            only_in: transaction_snapshot.then(local_xid),
            registry: Rc::clone(&registry),
        })
    });
    registry
}

fn load() -> (pg_sys::Oid, Registry) {
    const QUERY: &str = "SELECT metric_type, value_kind, min_value, max_value, labels::text \
                         FROM metrics_ingest.metric_types";
    // By name, not from a row: an empty registry still has a table to watch.
    const RELID: &str = "SELECT 'metrics_ingest.metric_types'::pg_catalog.regclass::pg_catalog.oid";
    let loaded = Spi::connect(
        |client| -> Result<(pg_sys::Oid, Vec<MetricTypeRule>), pgrx::spi::Error> {
            let relid = client
                .select(RELID, None, &[])?
                .first()
                .get_one::<pg_sys::Oid>()?
                .unwrap_or(pg_sys::InvalidOid);
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
            Ok((relid, rules))
        },
    );
    match loaded {
        Ok((relid, rules)) => (relid, Registry::new(rules)),
        Err(e) => raise_internal("loading metric_types", e),
    }
}

/// The trigger on metric_types: invalidate every backend's cached registry.
#[pg_trigger(sql = false)]
fn metric_types_changed<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let relid = trigger.relid()?;
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None)
}
