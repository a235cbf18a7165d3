//! The benchmark harness behind the `bench` binary.
//!
//! - [`driver`]: open- and closed-loop load over a keep-alive pool, HDR histograms;
//! - [`processes`]: the mock and the relay as child processes;
//! - [`procfs`]: CPU and RSS of the relay from /proc;
//! - [`workload`]: request bodies (small, Claude-Code-sized);
//! - [`replay`]: event-log append and projection replay throughput;
//! - [`journal`]: what the event journal costs a request;
//! - [`scenarios`]: the scenarios and their markdown tables.

pub mod driver;
pub mod journal;
pub mod processes;
pub mod procfs;
pub mod replay;
pub mod scenarios;
pub mod workload;
