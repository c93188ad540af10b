//! Shared helpers for the integration tests and the benchmark (the `bench/`
//! crate): connecting to the server the test script started, and generating
//! realistic events.

pub mod events;
pub mod server;
