//! fmgr boilerplate: the `pg_finfo_<name>` functions PostgreSQL looks up next
//! to every C-language function (`LANGUAGE c ... AS 'MODULE_PATHNAME', '<name>'`)
//! to learn it follows the version-1 calling convention.

use pgrx::pg_sys;

pub static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

/// Declares `pg_finfo_<name>` for each version-1 function named.
macro_rules! version_1 {
    ($($finfo:ident),+ $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
                &$crate::sql::fmgr::V1
            }
        )+
    };
}

version_1!(
    pg_finfo_ingest_json_text_wrapper,
    pg_finfo_ingest_json_jsonb_wrapper,
    pg_finfo_insert_metric_text_wrapper,
    pg_finfo_insert_metric_number_wrapper,
    pg_finfo_partitions_wrapper,
);
