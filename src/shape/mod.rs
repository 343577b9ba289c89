//! Bandwidth shaping (issue 26), sans-IO: how many payload bytes a source
//! may move in each direction now, and when it may move more.
//!
//! A source (one container address) gets a [`Shaper`] when its class caps
//! a direction (`rate`, `rate_up`, `rate_down`) or its tunnel has a `rate`
//! to share; otherwise [`Shaper::new`] gives `None`, and such a source is
//! relayed as before (a config without classes and rates costs one
//! `Option` test per pump). Each shaped direction is a [`ByteBucket`] at
//! the lower of the class cap and the source's share of the tunnel's rate;
//! the share comes from the tunnel's [`TunnelShare`], which all workers
//! hold: `share.rs` says how it is kept across workers without a lock.
//!
//! A source's flows and sessions all live in one worker, which owns its
//! shaper: the pumps of those flows share its buckets. How a pump uses it:
//!
//! ```text
//!  a direction can move ─► g = shaper.allow(dir, want, now)      (takes nothing)
//!    g.bytes > 0 ─► move at most g.bytes (the read's or splice's length)
//!                ─► shaper.consume(dir, moved, now)
//!    moved everything granted, g.wake = Some(t) ─► timer at t; leave the direction
//!          until then: its socket stays unread, TCP's window closes, the sender slows
//!    bytes that moved unasked (handshake leftovers, a datagram) ─► consume anyway: debt
//! ```
//!
//! Accuracy. One bucket lets through at most `rate × time + burst` bytes
//! (exact integer arithmetic, no drift), and a greedy direction woken at
//! its grants' wake-ups gets all of `rate × time` (a wake-up may be late
//! by ¾ of the burst, 15 ms, without losing any). The burst is 20 ms of
//! the rate, at least 16 KiB: on a 20 Mbit/s class, 50 kB, 0.2 % of 10 s.
//! A tunnel's share is exact in steady state, its transients bounded
//! (`share.rs`: about 1 % over the first 10 s, the issue allows ±10 %).
//! A source's flows share its buckets first come, first served: shaping
//! is per source, not per flow.

mod bucket;
mod shaper;
mod share;

pub use bucket::{BURST_MIN, BURST_TIME, ByteBucket, DEBT_MIN, DEBT_TIME, Grant, MAX_WAIT, burst_for};
pub use shaper::{ClassLimits, Shaper};
pub use share::{REFRESH, TunnelShare, WINDOW};

/// A direction of a source's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the source (client) to the exit.
    Up,
    /// From the exit back to the source.
    Down,
}

impl Dir {
    /// 0 for up, 1 for down.
    pub fn index(self) -> usize {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }
}

#[cfg(test)]
mod tests;
