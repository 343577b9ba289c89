//! Bandwidth shaping (issue 26), sans-IO: per-source byte buckets.

mod bucket;

pub use bucket::{BURST_MIN, BURST_TIME, ByteBucket, DEBT_MIN, DEBT_TIME, Grant, MAX_WAIT, burst_for};
