//! The load benchmark's library part: the no-op webhook's answer, shared by the benchmark
//! binary and its micro-benchmark.

pub mod noop;
