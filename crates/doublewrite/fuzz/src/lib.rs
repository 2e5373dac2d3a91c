//! Shared code of the fuzz targets: the checks every input must pass and the counting
//! allocator that enforces the allocation bounds. The stable regression test
//! `crates/doublewrite/tests/fuzz_regressions.rs` includes the same two files.

pub mod alloc_meter;
pub mod checks;
