//! Placeholder; the policies issue fills this with per-policy pick benchmarks.
fn main() {}
