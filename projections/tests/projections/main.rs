//! Integration tests of the projections crate: given events, expect rows; on SQLite,
//! PostgreSQL and MariaDB (every test body runs on each).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "tests fail loudly and report timings"
)]

mod common;
mod determinism;
mod given_when_then;
mod replay;
mod runner;
