//! Zero-downtime upgrades (issue 28).

pub mod notify;
