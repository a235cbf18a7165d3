//! Benchmark support for the relay: a faithful mock Anthropic upstream and a load driver.
//!
//! Layout:
//! - [`mock`]: the mock upstream (library for in-process tests, `mock-upstream` binary for
//!   out-of-process benchmarks).
//!
//! The `bench` binary (src/main.rs) runs the scenarios of the benchmark issue.

pub mod mock;
