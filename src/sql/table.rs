//! What the write paths know about metrics_ingest.metrics and its partitions:
//! whether the fast path may write them (and if not, why), the planned column
//! defaults and CHECK constraints, and where each column lives in each
//! partition. Worked out once per backend; dropped when PostgreSQL says the
//! table, a partition or any function changed (relcache and PROCOID syscache
//! invalidations, the same signals that make the plan cache replan).
//!
//! Calls keep an `Rc` of what they use, so an invalidation arriving in the
//! middle of a call (a partition made by this very call) never frees planned
//! expressions still in use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::{pg_guard, pg_sys, PgMemoryContexts};

use super::datum::{Column, SUPPLIED};
use super::errors::raise;
use super::pg_compat;

/// Why the fast path hands rows to the INSERT path. None: it may write directly.
pub type InsertReason = Option<&'static str>;

/// The table itself (the partitioned parent, or a plain table).
pub struct TableShape {
    pub relid: pg_sys::Oid,
    pub partitioned: bool,
    /// Set when no row may take the fast path (triggers, rules, RLS, ...).
    pub insert_path: InsertReason,
    /// The table has INSERT rules: INSERT ... ON CONFLICT is refused there.
    pub has_rules: bool,
    /// Citus distributes the table: the INSERT path writes set-wise.
    pub distributed: bool,
    /// Planned defaults of the columns an element does not supply, by column name:
    /// for a partitioned table these are the parent's, as INSERT through it uses.
    pub defaults: Vec<(String, *mut pg_sys::Expr)>,
    _memory: PgMemoryContexts,
}

/// One partition (or the plain table) as the fast path writes it.
pub struct LeafLayout {
    pub insert_path: InsertReason,
    pub natts: usize,
    /// 0-based attribute of each supplied column, in `Column::ALL`'s order.
    pub attribute_of: [usize; SUPPLIED],
    /// (attribute, index into `TableShape::defaults`) for every defaulted column.
    pub defaults: Vec<(usize, usize)>,
    /// Planned CHECK constraints, in the order of the relation's `constr->check`.
    pub checks: Vec<*mut pg_sys::Expr>,
    _memory: PgMemoryContexts,
}

thread_local! {
    static TABLE: RefCell<Option<Rc<TableShape>>> = const { RefCell::new(None) };
    /// The partition bounds of the table, kept between calls (an insert_metric
    /// call would otherwise copy them every time); any relcache invalidation of
    /// the table (ATTACH, DETACH, DROP of a partition) drops them.
    static ROUTES: RefCell<Option<(pg_sys::Oid, Rc<Vec<Route>>)>> = const { RefCell::new(None) };
    static LEAVES: RefCell<Option<HashMap<pg_sys::Oid, Rc<LeafLayout>>>> = const { RefCell::new(None) };
}

fn forget_everything() {
    TABLE.with(|t| t.borrow_mut().take());
    ROUTES.with(|r| r.borrow_mut().take());
    LEAVES.with(|l| l.borrow_mut().take());
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_relcache_invalidation(
    _arg: pg_sys::Datum,
    relid: pg_sys::Oid,
) {
    if relid == pg_sys::InvalidOid {
        forget_everything();
        return;
    }
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        if t.as_ref().is_some_and(|shape| shape.relid == relid) {
            *t = None;
        }
    });
    ROUTES.with(|r| {
        let mut r = r.borrow_mut();
        if r.as_ref().is_some_and(|(oid, _)| *oid == relid) {
            *r = None;
        }
    });
    LEAVES.with(|l| {
        if let Some(leaves) = l.borrow_mut().as_mut() {
            leaves.remove(&relid);
        }
    });
}

/// Any change to pg_proc: a default or CHECK may call the function replaced.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_proc_invalidation(
    _arg: pg_sys::Datum,
    _cacheid: std::ffi::c_int,
    _hashvalue: u32,
) {
    forget_everything();
}

/// Locks metrics_ingest.metrics for writing (ROW EXCLUSIVE) and returns its oid,
/// found by name every time: after a rename, or a DROP and CREATE EXTENSION in
/// another session, the caller gets PostgreSQL's ordinary errors (42P01, 3F000).
pub fn lock_metrics() -> pg_sys::Oid {
    // SAFETY: makeRangeVar copies nothing and keeps the static C strings, which
    // live forever; RangeVarGetRelidExtended raises (does not return) when the
    // relation is missing because RVR_MISSING_OK is not passed.
    unsafe {
        let range_var = pg_sys::makeRangeVar(
            c"metrics_ingest".as_ptr().cast_mut(),
            c"metrics".as_ptr().cast_mut(),
            -1,
        );
        pg_sys::RangeVarGetRelidExtended(
            range_var,
            pg_sys::RowExclusiveLock as pg_sys::LOCKMODE,
            0,
            None,
            std::ptr::null_mut(),
        )
    }
}

/// Checks that the current user may INSERT into the table, as COPY FROM does.
pub fn check_insert_privilege(relid: pg_sys::Oid) {
    // SAFETY: plain catalog lookups on a relation the caller has locked;
    // aclcheck_error raises 42501 and does not return.
    unsafe {
        let result = pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), pg_sys::ACL_INSERT as _);
        if result != pg_sys::AclResult::ACLCHECK_OK {
            pg_sys::aclcheck_error(
                result,
                pg_sys::ObjectType::OBJECT_TABLE,
                pg_sys::get_rel_name(relid),
            );
        }
    }
}

/// The table's shape; `rel` is the open, locked table.
///
/// # Safety
/// `rel` must be a valid open relation.
pub unsafe fn table_shape(rel: pg_sys::Relation) -> Rc<TableShape> {
    // SAFETY: the caller passes an open relation (this function's contract).
    let relid = unsafe { (*rel).rd_id };
    if let Some(shape) = TABLE
        .with(|t| t.borrow().clone())
        .filter(|s| s.relid == relid)
    {
        return shape;
    }
    let mut memory = PgMemoryContexts::new("metrics_ingest table shape");
    // SAFETY: planning runs in `memory`, a child of the current context that
    // is re-parented under TopMemoryContext to live as long as the cache entry.
    let shape = unsafe {
        pg_sys::MemoryContextSetParent(memory.value(), pg_sys::TopMemoryContext);
        memory.switch_to(|_| plan_table(rel))
    };
    let shape = Rc::new(TableShape {
        relid,
        partitioned: shape.0,
        insert_path: shape.1,
        has_rules: shape.2,
        defaults: shape.3,
        distributed: shape.4,
        _memory: memory,
    });
    TABLE.with(|t| *t.borrow_mut() = Some(Rc::clone(&shape)));
    shape
}

type Planned = (
    bool,
    InsertReason,
    bool,
    Vec<(String, *mut pg_sys::Expr)>,
    bool,
);

unsafe fn plan_table(rel: pg_sys::Relation) -> Planned {
    // SAFETY: `rel` is open (table_shape's contract); its tuple descriptor and
    // catalog form stay valid while it is open.
    unsafe {
        let form = (*rel).rd_rel;
        let relkind = (*form).relkind as u8;
        let partitioned = relkind == pg_sys::RELKIND_PARTITIONED_TABLE;
        let has_rules = !(*rel).rd_rules.is_null();
        let distributed = super::citus::is_distributed((*rel).rd_id);
        let mut defaults = Vec::new();
        // Citus first: whatever else the table has, its rows belong to its shards.
        let reason = if distributed {
            Some("it is distributed by Citus")
        } else if relkind != pg_sys::RELKIND_RELATION && !partitioned {
            Some("it is not a plain or partitioned table")
        } else if (*form).relispartition {
            Some("it is itself a partition of another table")
        } else if !(*rel).trigdesc.is_null() {
            Some("it has triggers")
        } else if has_rules {
            Some("it has rules")
        } else if (*form).relrowsecurity {
            Some("it has row-level security")
        } else {
            plan_defaults(rel, &mut defaults)
        };
        (partitioned, reason, has_rules, defaults, distributed)
    }
}

/// Plans the defaults of the columns an element does not supply; refuses the
/// fast path where an INSERT would do something it cannot (see each reason).
unsafe fn plan_defaults(
    rel: pg_sys::Relation,
    defaults: &mut Vec<(String, *mut pg_sys::Expr)>,
) -> InsertReason {
    // SAFETY: `rel` is open; attribute i < natts is inside the descriptor.
    unsafe {
        let tupdesc = (*rel).rd_att;
        let mut present = [false; SUPPLIED];
        for i in 0..(*tupdesc).natts as usize {
            let attribute = pg_compat::tuple_desc_attr(tupdesc, i);
            if (*attribute).attisdropped {
                continue;
            }
            if (*attribute).attgenerated != 0 {
                return Some("it has a generated column");
            }
            let name = CStr::from_ptr((*attribute).attname.data.as_ptr());
            match Column::by_name(name) {
                Some(column) => {
                    // A typmod (timestamptz(0)) or a domain would make INSERT coerce.
                    if (*attribute).atttypid != column.type_oid() || (*attribute).atttypmod != -1 {
                        return Some("a column's type differs from the one the extension made");
                    }
                    present[column as usize] = true;
                }
                None => {
                    if pg_sys::get_typtype((*attribute).atttypid)
                        == pg_sys::TYPTYPE_DOMAIN as std::ffi::c_char
                    {
                        return Some("a column has a domain type");
                    }
                    let default = pg_sys::build_column_default(rel, (i + 1) as i32);
                    if default.is_null() {
                        continue;
                    }
                    // COPY does not batch rows whose defaults are volatile (other than
                    // nextval); the INSERT path evaluates them row by row as INSERT does.
                    if pg_sys::contain_volatile_functions_not_nextval(default) {
                        return Some("a column default is volatile");
                    }
                    let planned = pg_sys::expression_planner(default.cast());
                    defaults.push((name.to_string_lossy().into_owned(), planned));
                }
            }
        }
        present
            .contains(&false)
            .then_some("a column the extension made is missing")
    }
}

/// The layout of one partition (or of the plain table), for the fast path.
///
/// # Safety
/// `rel` must be a valid open relation, a leaf of `table`.
pub unsafe fn leaf_layout(rel: pg_sys::Relation, table: &TableShape) -> Rc<LeafLayout> {
    // SAFETY: `rel` is open (this function's contract).
    let relid = unsafe { (*rel).rd_id };
    let cached = LEAVES.with(|l| l.borrow().as_ref().and_then(|m| m.get(&relid).cloned()));
    if let Some(layout) = cached {
        return layout;
    }
    let mut memory = PgMemoryContexts::new("metrics_ingest leaf layout");
    // SAFETY: as in table_shape: planning runs in a context kept with the entry.
    let layout = unsafe {
        pg_sys::MemoryContextSetParent(memory.value(), pg_sys::TopMemoryContext);
        memory.switch_to(|_| plan_leaf(rel, table))
    };
    let layout = Rc::new(LeafLayout {
        insert_path: layout.0,
        natts: layout.1,
        attribute_of: layout.2,
        defaults: layout.3,
        checks: layout.4,
        _memory: memory,
    });
    LEAVES.with(|l| {
        l.borrow_mut()
            .get_or_insert_with(HashMap::new)
            .insert(relid, Rc::clone(&layout))
    });
    layout
}

type PlannedLeaf = (
    InsertReason,
    usize,
    [usize; SUPPLIED],
    Vec<(usize, usize)>,
    Vec<*mut pg_sys::Expr>,
);

unsafe fn plan_leaf(rel: pg_sys::Relation, table: &TableShape) -> PlannedLeaf {
    // SAFETY: `rel` is open; attribute and check indexes stay inside the
    // descriptor's natts and num_check.
    unsafe {
        let form = (*rel).rd_rel;
        let tupdesc = (*rel).rd_att;
        let natts = (*tupdesc).natts as usize;
        let mut attribute_of = [usize::MAX; SUPPLIED];
        let mut defaults = Vec::new();
        let mut checks = Vec::new();
        let mut reason = if (*form).relkind as u8 != pg_sys::RELKIND_RELATION {
            Some("the partition is not a plain table")
        } else if !(*rel).trigdesc.is_null() {
            Some("the partition has triggers")
        } else {
            None
        };
        for i in 0..natts {
            let attribute = pg_compat::tuple_desc_attr(tupdesc, i);
            if (*attribute).attisdropped {
                continue;
            }
            let name = CStr::from_ptr((*attribute).attname.data.as_ptr());
            if let Some(column) = Column::by_name(name) {
                attribute_of[column as usize] = i;
            } else if let Some(k) = table
                .defaults
                .iter()
                .position(|(n, _)| n.as_bytes() == name.to_bytes())
            {
                defaults.push((i, k));
            }
        }
        if attribute_of.contains(&usize::MAX) {
            reason = reason.or(Some("the partition lacks a column"));
        }
        let constraints = (*tupdesc).constr;
        if !constraints.is_null() {
            for i in 0..(*constraints).num_check as usize {
                let check = (*constraints).check.add(i);
                let expression = pg_sys::stringToNode((*check).ccbin);
                checks.push(pg_sys::expression_planner(expression.cast()));
            }
        }
        (reason, natts, attribute_of, defaults, checks)
    }
}

/// One partition's range of "timestamp", as microseconds since 2000-01-01
/// (timestamptz's own representation), lower inclusive, upper exclusive.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub lower: i64,
    pub upper: i64,
    pub relid: pg_sys::Oid,
}

/// The partitions of the open partitioned table `rel`, sorted, read from its
/// partition descriptor (the relcache's copy of the catalog). A partition
/// being detached (DETACH PARTITION ... CONCURRENTLY not finished) takes no
/// rows, and is left out unless `with_detaching`.
///
/// # Safety
/// `rel` must be a valid open partitioned relation.
pub unsafe fn routes_of(rel: pg_sys::Relation, with_detaching: bool) -> Vec<Route> {
    // SAFETY: `rel` is open and partitioned; the descriptor and its bound info
    // arrays hold nparts oids, ndatums datums/kinds and ndatums + 1 indexes.
    unsafe {
        let partdesc = pg_sys::RelationGetPartitionDesc(rel, !with_detaching);
        if partdesc.is_null() || (*partdesc).nparts == 0 || (*partdesc).boundinfo.is_null() {
            return Vec::new();
        }
        let bounds = (*partdesc).boundinfo;
        if !pg_compat::is_range_partitioned(bounds) {
            raise(
                pgrx::PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                "metrics_ingest.metrics must be partitioned by range of \"timestamp\"".into(),
            );
        }
        let ndatums = (*bounds).ndatums as usize;
        let value = |i: usize| -> i64 {
            let kind = *(*(*bounds).kind.add(i));
            match kind {
                pg_sys::PartitionRangeDatumKind::PARTITION_RANGE_DATUM_MINVALUE => i64::MIN,
                pg_sys::PartitionRangeDatumKind::PARTITION_RANGE_DATUM_MAXVALUE => i64::MAX,
                _ => (*(*(*bounds).datums.add(i))).value() as i64,
            }
        };
        let mut routes = Vec::with_capacity((*partdesc).nparts as usize);
        for i in 0..ndatums.saturating_sub(1) {
            let index = *(*bounds).indexes.add(i + 1);
            if index >= 0 {
                routes.push(Route {
                    lower: value(i),
                    upper: value(i + 1),
                    relid: *(*partdesc).oids.add(index as usize),
                });
            }
        }
        routes
    }
}

/// The partitions of the open partitioned table `rel`: the kept copy while no
/// invalidation has dropped it, else read again (see `routes`).
///
/// # Safety
/// `rel` must be a valid open partitioned relation.
pub unsafe fn cached_routes(rel: pg_sys::Relation) -> Rc<Vec<Route>> {
    // SAFETY: `rel` is open (this function's contract).
    let relid = unsafe { (*rel).rd_id };
    if let Some(routes) = ROUTES.with(|r| {
        r.borrow()
            .as_ref()
            .filter(|(oid, _)| *oid == relid)
            .map(|(_, routes)| Rc::clone(routes))
    }) {
        return routes;
    }
    // SAFETY: as above.
    let routes = Rc::new(unsafe { self::routes(rel) });
    ROUTES.with(|r| *r.borrow_mut() = Some((relid, Rc::clone(&routes))));
    routes
}

/// `metrics_ingest.partitions()`: every partition of metrics with its range,
/// from the partition descriptor, after taking in the invalidations other
/// sessions' commits sent. A query of the catalog would read it under the
/// transaction's snapshot: under REPEATABLE READ it missed partitions made
/// since, and partition_for then made one overlapping them (0.3.2). A partition
/// being detached is listed: its range is not free for a new one. MINVALUE
/// and MAXVALUE bounds are -infinity and infinity (timestamptz's own). No rows
/// if metrics is missing or not partitioned.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn partitions_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: called by fmgr as a set-returning function in materialize mode;
    // metrics is opened with ACCESS SHARE only while its descriptor is read,
    // and the tuplestore copies each row's by-value datums.
    unsafe {
        pg_sys::InitMaterializedSRF(fcinfo, 0);
        let result_info = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        let (store, descriptor) = ((*result_info).setResult, (*result_info).setDesc);
        let relid = extension_relation(c"metrics");
        if relid == pg_sys::InvalidOid {
            return pg_sys::Datum::from(0);
        }
        pg_sys::AcceptInvalidationMessages();
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let partitioned =
            (*(*rel).rd_rel).relkind == pg_sys::RELKIND_PARTITIONED_TABLE as std::ffi::c_char;
        let all = if partitioned {
            routes_of(rel, true)
        } else {
            Vec::new()
        };
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        for r in all {
            let mut values = [
                pg_sys::Datum::from(r.relid),
                pg_sys::Datum::from(r.lower),
                pg_sys::Datum::from(r.upper),
            ];
            let mut nulls = [false; 3];
            pg_sys::tuplestore_putvalues(
                store,
                descriptor,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
        }
        pg_sys::Datum::from(0)
    }
}

/// The partitions of `rel` that take rows (see `routes_of`).
///
/// # Safety
/// `rel` must be a valid open partitioned relation.
pub unsafe fn routes(rel: pg_sys::Relation) -> Vec<Route> {
    // SAFETY: this function's contract.
    unsafe { routes_of(rel, false) }
}

/// The partition holding `pg_us` (microseconds since 2000-01-01), if any.
pub fn route(routes: &[Route], pg_us: i64) -> Option<pg_sys::Oid> {
    let after = routes.partition_point(|r| r.lower <= pg_us);
    after
        .checked_sub(1)
        .map(|i| routes[i])
        .filter(|r| pg_us < r.upper)
        .map(|r| r.relid)
}

/// The oid of `metrics_ingest.<name>`, or InvalidOid when there is no such
/// relation (or no such schema). Two syscache lookups.
pub fn extension_relation(name: &CStr) -> pg_sys::Oid {
    // SAFETY: syscache lookups by NUL-terminated names; nothing is kept.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"metrics_ingest".as_ptr(), true);
        pg_sys::get_relname_relid(name.as_ptr(), namespace)
    }
}

/// A relation opened for writing through the executor, as COPY opens its
/// target: ROW EXCLUSIVE, a fresh executor state, and in its query memory a
/// result relation whose indexes are open with the information speculative
/// insertion and `contention::probe` need. `close_for_insert` releases it.
///
/// # Safety
/// Inside a transaction; the caller releases what this returns once.
pub unsafe fn open_for_insert(
    relid: pg_sys::Oid,
) -> (
    pg_sys::Relation,
    *mut pg_sys::EState,
    *mut pg_sys::ResultRelInfo,
) {
    // SAFETY: the result relation is allocated and initialised in the executor
    // state's query memory, which lives until FreeExecutorState.
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let estate = pg_sys::CreateExecutorState();
        let rri = PgMemoryContexts::For((*estate).es_query_cxt).switch_to(|_| {
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                as *mut pg_sys::ResultRelInfo;
            (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::InitResultRelInfo(rri, rel, 0, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(rri, true);
            rri
        });
        (rel, estate, rri)
    }
}

/// Releases what `open_for_insert` opened, in reverse order; the relation
/// stays locked until the transaction ends (NoLock).
///
/// # Safety
/// The three come from one `open_for_insert` and are not used afterwards.
pub unsafe fn close_for_insert(
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
) {
    // SAFETY: see the function's contract.
    unsafe {
        pg_sys::ExecResetTupleTable((*estate).es_tupleTable, false);
        pg_sys::ExecCloseIndices(rri);
        pg_sys::FreeExecutorState(estate);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

/// Whether index `i` of an opened result relation is unique, ready for
/// inserts and checked at once (not deferrable): one that may be an arbiter,
/// as INSERT ... ON CONFLICT picks them.
///
/// # Safety
/// `rri`'s indexes are open and `i < ri_NumIndices`.
pub unsafe fn is_immediate_unique(rri: *mut pg_sys::ResultRelInfo, i: usize) -> bool {
    // SAFETY: see the function's contract.
    unsafe {
        let index = *(*rri).ri_IndexRelationDescs.add(i);
        let info = *(*rri).ri_IndexRelationInfo.add(i);
        (*info).ii_Unique && (*info).ii_ReadyForInserts && (*(*index).rd_index).indimmediate
    }
}
