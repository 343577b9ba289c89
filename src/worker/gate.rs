//! A source's gate in a worker: its shaper (issue 26) and its quota's
//! meter (issue 27), which the pumps of its flows and sessions ask before
//! they move bytes and tell what moved.
//!
//! ```text
//!  allow(dir, want) ─┬─ quota spent, Reject ─► nothing; wake soon (the flow ends there)
//!                    ├─ quota spent, Throttle(r) ─► the throttle's bucket at r
//!                    └─ else ─► the shaper's grant (no shaper: all of it)
//!  consume(dir, n) ─► the meter counts n (both directions, every kind of
//!                     payload); the buckets in use take it
//! ```
//!
//! The meter is shared by every worker (a prefix route's addresses, and a
//! container's v4 and v6, may live in several): one relaxed add per read,
//! one or two relaxed loads per grant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::OnQuota;
use crate::quota::Meter;
use crate::shape::{ClassLimits, Dir, Grant, Shaper};

/// How soon a refused direction's pump comes back (and finds its flow
/// ended): a timer, never a busy loop.
const REFUSED_WAKE: Duration = Duration::from_millis(10);

/// A source's shaping and metering (see the module doc).
#[derive(Debug)]
pub(super) struct Gate {
    shaper: Option<Shaper>,
    quota: Option<Metered>,
}

/// A metered source's quota.
#[derive(Debug)]
pub(super) struct Metered {
    meter: Arc<Meter>,
    /// `Some` for `on_quota: Throttle(r)`: a bucket at `r`, used once spent.
    throttle: Option<Shaper>,
}

impl Metered {
    pub(super) fn new(meter: Arc<Meter>, on: OnQuota, now: Instant) -> Metered {
        let throttle = match on {
            OnQuota::Reject => None,
            OnQuota::Throttle(r) => {
                Shaper::new(ClassLimits { rate_up: Some(r), rate_down: Some(r), weight: 1 }, None, now)
            }
        };
        Metered { meter, throttle }
    }
}

impl Gate {
    /// A gate when something holds the source: a shaper, a quota, or both.
    pub(super) fn new(shaper: Option<Shaper>, quota: Option<Metered>) -> Option<Gate> {
        (shaper.is_some() || quota.is_some()).then_some(Gate { shaper, quota })
    }

    /// The quota is spent and says Reject: nothing moves, flows end.
    pub(super) fn refused(&self) -> bool {
        self.quota.as_ref().is_some_and(|q| q.throttle.is_none() && q.meter.spent())
    }

    /// The throttle's bucket, while a Throttle quota is spent.
    fn throttling(&mut self) -> Option<&mut Shaper> {
        let q = self.quota.as_mut()?;
        if q.meter.spent() { q.throttle.as_mut() } else { None }
    }

    /// Whether `n` bytes would go past a Reject quota (a datagram that
    /// does not fit is dropped whole).
    pub(super) fn over_quota(&self, n: usize) -> bool {
        self.quota.as_ref().is_some_and(|q| q.throttle.is_none() && q.meter.left() < n as u64)
    }

    /// How many of `want` bytes may move in `dir` now (see `Shaper::allow`):
    /// never past a Reject quota (a worker alone on the source's identity
    /// stops exactly at it; workers sharing one may pass it by a read each).
    pub(super) fn allow(&mut self, dir: Dir, want: usize, now: Instant) -> Grant {
        if self.refused() {
            return Grant { bytes: 0, wake: Some(now + REFUSED_WAKE) };
        }
        if let Some(t) = self.throttling() {
            return t.allow(dir, want, now);
        }
        let mut g = match &mut self.shaper {
            Some(s) => s.allow(dir, want, now),
            None => Grant::all(want),
        };
        if let Some(q) = self.quota.as_ref().filter(|q| q.throttle.is_none()) {
            let left = usize::try_from(q.meter.left()).unwrap_or(usize::MAX);
            if left < g.bytes {
                // The rest is refused: the flow ends at its next pump.
                g = Grant { bytes: left, wake: Some(now + REFUSED_WAKE) };
            }
        }
        g
    }

    /// Counts `n` payload bytes that moved in `dir`: the meter, and the
    /// buckets in use (see `Shaper::consume`).
    pub(super) fn consume(&mut self, dir: Dir, n: usize, now: Instant) -> u64 {
        if let Some(q) = &self.quota {
            q.meter.add(u64::try_from(n).unwrap_or(u64::MAX));
        }
        if let Some(t) = self.throttling() {
            t.consume(dir, n, now);
        }
        self.shaper.as_mut().map_or(0, |s| s.consume(dir, n, now))
    }

    /// Counts `n` bytes against the quota only (DNS carried over TCP:
    /// metered, never shaped).
    pub(super) fn count(&self, n: usize) {
        if let Some(q) = &self.quota {
            q.meter.add(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// The rate `dir` is held to now (bytes/s): a spent quota's throttle,
    /// else the shaper's; `None`: not held.
    pub(super) fn rate(&self, dir: Dir) -> Option<u64> {
        let throttled = self.quota.as_ref().filter(|q| q.meter.spent()).and_then(|q| q.throttle.as_ref());
        throttled.or(self.shaper.as_ref()).and_then(|s| s.rate(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Quota;
    use crate::quota::Ledger;

    fn meter(bytes: u64) -> Arc<Meter> {
        let q = Quota { bytes, every: Duration::from_secs(3600), on: OnQuota::Reject };
        Ledger::new().meter("10.8.0.10/32", &q, 1_000)
    }

    #[test]
    fn nothing_holds_no_gate() {
        assert!(Gate::new(None, None).is_none());
    }

    #[test]
    fn a_reject_quota_counts_both_directions_then_refuses() {
        let now = Instant::now();
        let m = meter(1000);
        let mut g = Gate::new(None, Some(Metered::new(Arc::clone(&m), OnQuota::Reject, now))).unwrap();
        assert_eq!(g.allow(Dir::Up, 600, now).bytes, 600);
        g.consume(Dir::Up, 600, now);
        assert!(!g.refused());
        // Never past the quota: 400 left of a 4096 ask, and a datagram of
        // 401 would not fit.
        let grant = g.allow(Dir::Down, 4096, now);
        assert_eq!((grant.bytes, grant.wake), (400, Some(now + REFUSED_WAKE)));
        assert!(g.over_quota(401) && !g.over_quota(400));
        g.consume(Dir::Down, 400, now);
        assert_eq!(m.used(), 1000);
        assert!(g.refused());
        let grant = g.allow(Dir::Down, 100, now);
        assert_eq!((grant.bytes, grant.wake), (0, Some(now + REFUSED_WAKE)), "a timer, not a busy loop");
        assert_eq!(g.rate(Dir::Up), None);
    }

    #[test]
    fn a_throttle_quota_holds_to_its_rate_once_spent() {
        let now = Instant::now();
        let m = meter(1000);
        let on = OnQuota::Throttle(125_000); // 1mbit
        let mut g = Gate::new(None, Some(Metered::new(Arc::clone(&m), on, now))).unwrap();
        // Before: not held.
        assert_eq!(g.allow(Dir::Down, 1 << 20, now).bytes, 1 << 20);
        assert_eq!(g.rate(Dir::Down), None);
        g.consume(Dir::Down, 1 << 20, now);
        assert!(!g.refused(), "Throttle never refuses");
        // After: the throttle's burst (16 KiB at least), then a wait.
        let grant = g.allow(Dir::Down, 1 << 20, now);
        assert!(grant.bytes < 64 * 1024 && grant.wake.is_some(), "{grant:?}");
        assert_eq!(g.rate(Dir::Down), Some(125_000));
    }
}
