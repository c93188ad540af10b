//! Integration tests against a running server (see scripts/test.sh).
//!
//! Each test makes a database of its own (`metrics_ingest_tests::server::TestDb`) and
//! asserts what a user of the extension would see: stored rows, per-element outcomes,
//! SQLSTATEs. Tests that crash or restart backends take the cluster exclusively.

mod dump_restore;
mod faults;
mod hardening;
mod hostile;
mod install;
mod load;
mod partitions;
mod pipelines;
mod repeats;
mod rollups;
mod security;
mod support;
mod upgrade;
