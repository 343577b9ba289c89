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
/// How long a flow's turn is kept for it past the wake-up it was given
/// (a turn not taken by then, its flow gone or idle, goes).
const TURN_SLACK: Duration = Duration::from_millis(20);

/// A source's shaping and metering (see the module doc).
#[derive(Debug)]
pub(super) struct Gate {
    shaper: Option<Shaper>,
    quota: Option<Metered>,
    /// Per direction, the TCP flow (its client port) that last found the
    /// bucket empty, and until when its turn is kept: the next chunk goes
    /// to it, so flows woken at the same instant take turns (without
    /// this, the one whose timer sorts first took every chunk).
    turn: [Option<(u16, Instant)>; 2],
    /// Bytes that moved up and down, and bytes counted against the quota
    /// alone, since [`Gate::take_used`] (the meter exchange of an upgrade).
    used: [u64; 2],
    counted: u64,
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
        (shaper.is_some() || quota.is_some()).then_some(Gate {
            shaper,
            quota,
            turn: [None, None],
            used: [0, 0],
            counted: 0,
        })
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

    /// [`Gate::allow`] for the TCP flow of client port `who`, taking turns
    /// with the source's other flows while the rate holds them back: a
    /// flow that found nothing has the next chunk kept for it (see `turn`).
    pub(super) fn allow_turn(&mut self, dir: Dir, want: usize, now: Instant, who: u16) -> Grant {
        let g = self.allow(dir, want, now);
        let turn = &mut self.turn[dir.index()];
        if let Some((w, until)) = *turn {
            if w == who || now > until {
                *turn = None;
            } else if let Some(wake) = g.wake {
                // Held back, and another flow's turn: it comes after that one.
                return Grant { bytes: 0, wake: Some(wake) };
            }
        }
        if let (0, Some(wake), None) = (g.bytes, g.wake, *turn) {
            *turn = Some((who, wake + TURN_SLACK));
        }
        g
    }

    /// Counts `n` payload bytes that moved in `dir`: the meter, and the
    /// buckets in use (see `Shaper::consume`).
    pub(super) fn consume(&mut self, dir: Dir, n: usize, now: Instant) -> u64 {
        let u = &mut self.used[dir.index()];
        *u = u.saturating_add(n as u64);
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
    pub(super) fn count(&mut self, n: usize) {
        if let Some(q) = &self.quota {
            q.meter.add(u64::try_from(n).unwrap_or(u64::MAX));
            self.counted = self.counted.saturating_add(n as u64);
        }
    }

    /// What moved through the gate since the last call: bytes up and down,
    /// and the bytes its quota counted (0 when it has none).
    pub(super) fn take_used(&mut self) -> ([u64; 2], u64) {
        let used = std::mem::take(&mut self.used);
        let counted = std::mem::take(&mut self.counted);
        let metered =
            if self.quota.is_some() { used[0].saturating_add(used[1]).saturating_add(counted) } else { 0 };
        (used, metered)
    }

    /// Puts back what [`Gate::take_used`] took (a gate rebuilt by a reload).
    pub(super) fn restore_used(&mut self, used: [u64; 2], metered: u64) {
        self.used[0] = self.used[0].saturating_add(used[0]);
        self.used[1] = self.used[1].saturating_add(used[1]);
        // Metered bytes beyond up and down were counted alone.
        self.counted = self.counted.saturating_add(metered.saturating_sub(used[0].saturating_add(used[1])));
    }

    /// `n` bytes another process moved for the same source in `dir`: its
    /// buckets take them (not its meter: the ledger is told apart).
    pub(super) fn debit(&mut self, dir: Dir, n: u64, now: Instant) {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(t) = self.throttling() {
            t.debit(dir, n, now);
        }
        if let Some(s) = self.shaper.as_mut() {
            s.debit(dir, n, now);
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

    /// Two flows woken together on a held-back source take turns, and a
    /// turn not taken in time goes.
    #[test]
    fn flows_held_back_take_turns() {
        let now = Instant::now();
        let limits = ClassLimits { rate_up: Some(125_000), rate_down: Some(125_000), weight: 1 };
        let mut g = Gate::new(Shaper::new(limits, None, now), None).unwrap();
        let want = 1 << 20;
        let (a, b) = (40_001, 40_002);
        // A drains the burst; B finds nothing and is owed the next chunk.
        let ga = g.allow_turn(Dir::Down, want, now, a);
        g.consume(Dir::Down, ga.bytes, now);
        let gb = g.allow_turn(Dir::Down, want, now, b);
        assert_eq!(gb.bytes, 0);
        let t = gb.wake.unwrap();
        // Both wake at t, A first: A yields to B, B takes the chunk.
        let ga = g.allow_turn(Dir::Down, want, t, a);
        assert_eq!(ga.bytes, 0, "B's turn");
        assert!(ga.wake.unwrap() > t);
        let gb = g.allow_turn(Dir::Down, want, t, b);
        assert!(gb.bytes > 0);
        g.consume(Dir::Down, gb.bytes, t);
        // Next chunk, B's timer first this time: it takes the chunk, A
        // finds nothing and has the turn after.
        let t2 = ga.wake.unwrap();
        let gb = g.allow_turn(Dir::Down, want, t2, b);
        g.consume(Dir::Down, gb.bytes, t2);
        let ga = g.allow_turn(Dir::Down, want, t2, a);
        assert!(gb.bytes > 0 && ga.bytes == 0, "one chunk, one flow: {gb:?} {ga:?}");
        let t3 = ga.wake.unwrap();
        assert_eq!(g.allow_turn(Dir::Down, want, t3, b).bytes, 0, "A's turn");
        assert!(g.allow_turn(Dir::Down, want, t3, a).bytes > 0);
        // A turn nobody takes goes after the slack.
        let mut g = Gate::new(Shaper::new(limits, None, now), None).unwrap();
        let ga = g.allow_turn(Dir::Up, want, now, a);
        g.consume(Dir::Up, ga.bytes, now);
        let gb = g.allow_turn(Dir::Up, want, now, b);
        let late = gb.wake.unwrap() + TURN_SLACK + Duration::from_millis(1);
        assert!(g.allow_turn(Dir::Up, want, late, a).bytes > 0, "B never came back");
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
