//! A per-backend copy of `metrics_ingest.metric_types`, loaded on first use and
//! dropped when the table changes (its statement trigger sends a relcache
//! invalidation, delivered here at commit like any catalog change).

use std::cell::RefCell;
use std::rc::Rc;

use pgrx::prelude::*;

use super::errors::raise_internal;
use crate::core::registry::{MetricTypeRule, Registry, ValueKind};

thread_local! {
    static CACHED: RefCell<Option<(pg_sys::Oid, Rc<Registry>)>> = const { RefCell::new(None) };
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_relcache_invalidation(
    _arg: pg_sys::Datum,
    relid: pg_sys::Oid,
) {
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if relid == pg_sys::InvalidOid || cached.as_ref().is_some_and(|(oid, _)| *oid == relid) {
            *cached = None;
        }
    });
}

pub fn registry() -> Rc<Registry> {
    if let Some(registry) = CACHED.with(|c| c.borrow().as_ref().map(|(_, r)| Rc::clone(r))) {
        return registry;
    }
    let (relid, registry) = load();
    let registry = Rc::new(registry);
    CACHED.with(|c| *c.borrow_mut() = Some((relid, Rc::clone(&registry))));
    registry
}

fn load() -> (pg_sys::Oid, Registry) {
    const QUERY: &str = "SELECT metric_type, value_kind, min_value, max_value, labels::text, \
                         'metrics_ingest.metric_types'::pg_catalog.regclass::pg_catalog.oid \
                         FROM metrics_ingest.metric_types";
    let loaded = Spi::connect(
        |client| -> Result<(pg_sys::Oid, Vec<MetricTypeRule>), pgrx::spi::Error> {
            let mut relid = pg_sys::InvalidOid;
            let mut rules = Vec::new();
            for row in client.select(QUERY, None, &[])? {
                let name: String = row.get(1)?.unwrap_or_default();
                let kind_text: String = row.get(2)?.unwrap_or_default();
                let labels_text: String = row.get(5)?.unwrap_or_else(|| "{}".into());
                relid = row.get(6)?.unwrap_or(pg_sys::InvalidOid);
                let Some(kind) = ValueKind::parse(&kind_text) else {
                    raise_internal(
                        "metric_types",
                        format!("unknown value_kind {kind_text:?} for {name}"),
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
