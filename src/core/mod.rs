//! The pure core: reading payloads and validating elements. No pgrx types live
//! here, so all of it is tested with plain `#[test]` and fuzzed without a server.

pub mod element;
pub mod error;
pub mod payload;
pub mod registry;
pub mod rollup;
pub mod timestamp;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
