//! The benchmark harness (placeholder until the driver lands).

fn main() {}
